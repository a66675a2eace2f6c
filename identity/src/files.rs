//! Reading files whose size nobody promised: certificates, keys, bundles, configuration.
//!
//! A path can name `/dev/zero`, a FIFO or a runaway log; reading it whole would take the
//! process's memory. Every such file is read up to a cap, and a larger one is refused.

use std::io::Read;
use std::path::Path;

/// The largest file meshlet reads: far above any certificate chain, bundle or configuration.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads `path` whole, refusing it (with the reason) when it holds more than `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes; refused"),
        ));
    }
    Ok(out)
}

/// [`read_capped`] with [`MAX_FILE_BYTES`], as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, MAX_FILE_BYTES)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_not_read_forever() {
        let err = read_capped(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(err.to_string().contains("larger than 4096 bytes"), "{err}");
    }

    #[test]
    fn a_file_within_the_cap_is_read_whole() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"0123456789").unwrap();
        assert_eq!(read_capped(f.path(), 10).unwrap(), b"0123456789");
        assert!(read_capped(f.path(), 9).is_err());
    }
}
