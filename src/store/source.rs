//! Raw mail sources as stored: compressed with LZ4 (block format, size
//! prepended) where that saves at least an eighth, else as received. Packing
//! runs where mail is prepared (on every core, beside parsing), so the
//! batch's transaction writes fewer bytes; reading unpacks.
use super::{StoreError, StoreResult};

/// The `raw_encoding` of a source packed with [`pack`].
pub const LZ4: &str = "lz4";

/// The packed source, or `None` where packing would not save an eighth
/// (already compressed attachments, tiny mail).
pub fn pack(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 512 {
        return None;
    }
    let packed = lz4_flex::compress_prepend_size(raw);
    (packed.len() + raw.len() / 8 <= raw.len()).then_some(packed)
}

/// LZ4 expands at most about 255 times: a size prefix beyond that (or beyond
/// 1 GiB) is damage, refused before anything is allocated for it.
fn plausible(stored: &[u8]) -> bool {
    let Some(prefix) = stored.get(..4) else {
        return false;
    };
    let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    size <= (1 << 30) && size <= stored.len().saturating_mul(256)
}

/// The source as received, from its stored bytes and `raw_encoding`.
pub fn unpack(stored: Vec<u8>, encoding: Option<&str>) -> StoreResult<Vec<u8>> {
    match encoding {
        None => Ok(stored),
        Some(LZ4) if !plausible(&stored) => Err(StoreError::Corrupt(
            "a packed mail source gives an impossible size".into(),
        )),
        Some(LZ4) => lz4_flex::decompress_size_prepended(&stored)
            .map_err(|e| StoreError::Corrupt(format!("a packed mail source does not unpack: {e}"))),
        Some(other) => Err(StoreError::Corrupt(format!(
            "unknown raw_encoding '{other}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_packed_and_comes_back_whole() {
        let raw =
            "Subject: hello\r\n\r\n".to_string() + &"the same words again and again ".repeat(200);
        let packed = pack(raw.as_bytes()).expect("text packs");
        assert!(packed.len() < raw.len() / 2);
        assert_eq!(unpack(packed, Some(LZ4)).unwrap(), raw.as_bytes());
    }

    #[test]
    fn what_does_not_pack_is_kept_as_it_is() {
        let mut noise = vec![0u8; 4096];
        let mut x: u32 = 2_463_534_242;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        assert_eq!(pack(&noise), None);
        assert_eq!(pack(b"short"), None);
        assert_eq!(unpack(noise.clone(), None).unwrap(), noise);
    }

    #[test]
    fn damage_and_unknown_encodings_are_errors() {
        assert!(unpack(vec![0xff, 0xff, 0xff, 0x7f, 1, 2], Some(LZ4)).is_err());
        assert!(unpack(vec![1, 2, 3], Some("zstd")).is_err());
    }
}
