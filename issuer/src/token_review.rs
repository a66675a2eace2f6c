//! Who is asking: the caller's projected service-account token, reviewed by the API server
//! (the TokenReview API, as Kubernetes defines token authentication for others to use).
//!
//! The API server checks the signature, the expiry, the audience we ask it to check and, for a
//! token bound to a pod, that the pod still exists with the same uid. On top of that, a token
//! is good for an SVID only when it is a service account's, for our audience, bound to a pod,
//! and short-lived: a long-lived Secret token or a token made for another audience is refused.

use base64::Engine;
use meshlet_defaults::issuer::{MAX_TOKEN_LIFETIME_SECONDS, TOKEN_AUDIENCE};
use serde_json::{json, Value};

use crate::kube::{self, Api};

pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The caller, as the API server vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Why a token proves nothing.
#[derive(Debug, thiserror::Error)]
pub enum TokenRejected {
    #[error("no bearer token")]
    Missing,
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    #[error("the token is not for the audience {TOKEN_AUDIENCE:?}")]
    WrongAudience,
    #[error("{0:?} is not a service account")]
    NotServiceAccount(String),
    #[error("the token is not bound to a pod (a projected token of the pod is required)")]
    NotBoundToPod,
    #[error("the token lives {0} s; at most {MAX_TOKEN_LIFETIME_SECONDS} s is accepted")]
    LivesTooLong(u64),
    #[error("the token cannot be reviewed now: {0}")]
    Unavailable(String),
}

/// Reviews `token`: the caller it proves, or why it proves nothing.
pub async fn review(api: &Api, token: &str) -> Result<Caller, TokenRejected> {
    if token.is_empty() {
        return Err(TokenRejected::Missing);
    }
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [TOKEN_AUDIENCE]},
    });
    let (status, answer) = api
        .call(http::Method::POST, TOKEN_REVIEWS, Some(&request))
        .await
        .map_err(|e| TokenRejected::Unavailable(e.to_string()))?;
    if !status.is_success() {
        return Err(TokenRejected::Unavailable(kube::message(status, &answer)));
    }
    let caller = caller_of(&answer["status"])?;
    check_lifetime(token)?;
    Ok(caller)
}

/// Reads a TokenReview's status.
fn caller_of(status: &Value) -> Result<Caller, TokenRejected> {
    if status["authenticated"] != Value::Bool(true) {
        let error = status["error"].as_str().unwrap_or("not authenticated");
        return Err(TokenRejected::NotAuthenticated(error.to_owned()));
    }
    // An API server that ignores the audiences asked for answers without them: refuse rather
    // than take a token made for someone else.
    let audiences = status["audiences"].as_array();
    if !audiences.is_some_and(|a| a.iter().any(|x| x == TOKEN_AUDIENCE)) {
        return Err(TokenRejected::WrongAudience);
    }
    let user = &status["user"];
    let username = user["username"].as_str().unwrap_or("");
    let (namespace, service_account) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| TokenRejected::NotServiceAccount(username.to_owned()))?;
    let extra = |key: &str| -> Option<String> {
        let values = user["extra"][key].as_array()?;
        match values.as_slice() {
            [one] => one.as_str().filter(|s| !s.is_empty()).map(str::to_owned),
            _ => None,
        }
    };
    let (Some(pod_name), Some(pod_uid)) = (extra(POD_NAME), extra(POD_UID)) else {
        return Err(TokenRejected::NotBoundToPod);
    };
    Ok(Caller {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
        pod_uid,
    })
}

/// The token's own claims say how long it lives (the API server has checked the signature, so
/// they are the issuer's): a projected token is made for minutes to hours.
fn check_lifetime(token: &str) -> Result<(), TokenRejected> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(claims) = claims else {
        // Not a JWT the issuer can read; the API server accepted it, and its binding was checked.
        return Ok(());
    };
    let (Some(exp), Some(iat)) = (claims["exp"].as_u64(), claims["iat"].as_u64()) else {
        return Err(TokenRejected::LivesTooLong(u64::MAX));
    };
    let life = exp.saturating_sub(iat);
    if life > MAX_TOKEN_LIFETIME_SECONDS {
        return Err(TokenRejected::LivesTooLong(life));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(user: Value, audiences: Value) -> Value {
        json!({"authenticated": true, "user": user, "audiences": audiences})
    }

    fn pod_user(username: &str) -> Value {
        json!({"username": username, "extra": {POD_NAME: ["web-1"], POD_UID: ["u-1"]}})
    }

    #[test]
    fn a_pod_bound_service_account_token_for_meshlet_names_its_caller() {
        let caller = caller_of(&status(
            pod_user("system:serviceaccount:shop:web"),
            json!(["meshlet"]),
        ))
        .unwrap();
        assert_eq!(
            (caller.namespace.as_str(), caller.service_account.as_str()),
            ("shop", "web")
        );
        assert_eq!(caller.pod_name, "web-1");
    }

    #[test]
    fn what_the_api_server_did_not_vouch_for_is_refused() {
        let not_authenticated = json!({"authenticated": false, "error": "token expired"});
        assert!(matches!(
            caller_of(&not_authenticated),
            Err(TokenRejected::NotAuthenticated(e)) if e == "token expired"
        ));
        let other_audience = status(
            pod_user("system:serviceaccount:shop:web"),
            json!(["https://kubernetes.default.svc"]),
        );
        assert!(matches!(
            caller_of(&other_audience),
            Err(TokenRejected::WrongAudience)
        ));
        let no_audiences =
            json!({"authenticated": true, "user": pod_user("system:serviceaccount:shop:web")});
        assert!(matches!(
            caller_of(&no_audiences),
            Err(TokenRejected::WrongAudience)
        ));
        for name in [
            "alice",
            "system:node:n1",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
        ] {
            assert!(
                matches!(
                    caller_of(&status(pod_user(name), json!(["meshlet"]))),
                    Err(TokenRejected::NotServiceAccount(_))
                ),
                "{name}"
            );
        }
        let unbound = status(
            json!({"username": "system:serviceaccount:shop:web"}),
            json!(["meshlet"]),
        );
        assert!(matches!(
            caller_of(&unbound),
            Err(TokenRejected::NotBoundToPod)
        ));
    }

    fn jwt(claims: Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_token_that_lives_longer_than_a_day_is_refused() {
        assert!(check_lifetime(&jwt(json!({"iat": 1000, "exp": 1600}))).is_ok());
        assert!(matches!(
            check_lifetime(&jwt(json!({"iat": 1000, "exp": 1000 + 365 * 86400}))),
            Err(TokenRejected::LivesTooLong(_))
        ));
        assert!(matches!(
            check_lifetime(&jwt(json!({"iat": 1000}))),
            Err(TokenRejected::LivesTooLong(_))
        ));
    }
}
