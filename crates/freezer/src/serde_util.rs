//! Serde encodings for values JSON has no type for: byte paths and device numbers.
//!
//! Paths are bytes on Linux. They are written as JSON strings: valid UTF-8 as it is, a
//! backslash as `\\`, and every byte that is not part of valid UTF-8 as `\xHH`. Decoding is
//! exact, so a journal names the very path that was frozen even when it is not UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use hv_vss_sys::fs::DevNum;
use serde::{Deserialize, Deserializer, Serializer};

/// Encode path bytes as a string (see the module docs).
pub fn encode_path(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Decode [`encode_path`]'s output; `None` on a malformed escape.
pub fn decode_path(text: &str) -> Option<PathBuf> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            match bytes.get(i + 1)? {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'x' => {
                    let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                _ => return None,
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// `#[serde(with = "path")]` for `PathBuf`.
pub mod path {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_path(path))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let text = String::deserialize(d)?;
        decode_path(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad path escape in {text:?}")))
    }
}

/// `#[serde(with = "opt_path")]` for `Option<PathBuf>`.
pub mod opt_path {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(p) => s.serialize_some(&encode_path(p)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| {
                decode_path(&t)
                    .ok_or_else(|| serde::de::Error::custom(format!("bad path escape in {t:?}")))
            })
            .transpose()
    }
}

/// `#[serde(with = "paths")]` for `Vec<PathBuf>`.
pub mod paths {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| encode_path(p)))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| decode_path(t).ok_or_else(|| serde::de::Error::custom("bad path escape")))
            .collect()
    }
}

/// `#[serde(with = "os_string")]` for `OsString` (mount sources).
pub mod os_string {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(s_: &std::ffi::OsStr, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_path(Path::new(s_)))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OsString, D::Error> {
        super::path::deserialize(d).map(PathBuf::into_os_string)
    }
}

/// `#[serde(with = "dev")]` for [`DevNum`], as `"major:minor"`.
pub mod dev {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(dev: &DevNum, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&dev.to_string())
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DevNum, D::Error> {
        let text = String::deserialize(d)?;
        DevNum::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad device number {text:?}")))
    }
}

/// `#[serde(with = "devs")]` for `Vec<DevNum>`.
pub mod devs {
    use super::*;

    /// Serialize.
    pub fn serialize<S: Serializer>(devs: &[DevNum], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(devs.iter().map(ToString::to_string))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DevNum>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| DevNum::parse(t).ok_or_else(|| serde::de::Error::custom("bad device number")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_paths_stay_readable() {
        assert_eq!(encode_path(Path::new("/mnt/données")), "/mnt/données");
        assert_eq!(encode_path(Path::new("/a\\b")), "/a\\\\b");
        let raw = PathBuf::from(OsString::from_vec(b"/m\xffx".to_vec()));
        assert_eq!(encode_path(&raw), "/m\\xffx");
        assert_eq!(decode_path("/m\\xffx").unwrap(), raw);
        assert_eq!(decode_path("/bad\\q"), None);
        assert_eq!(decode_path("/bad\\x4"), None);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = PathBuf::from(OsString::from_vec(bytes));
            prop_assert_eq!(decode_path(&encode_path(&p)).unwrap(), p);
        }
    }
}
