//! The durable snapshot: the whole list (fingerprints, key, feed cursor) in one file,
//! written atomically (temp file, fsync, rename, fsync of the directory) and checked by a
//! SHA-256 trailer on restore.
//!
//! Layout (little endian):
//! `"JWTGREV2"` · key0 u64 · key1 u64 · max_lifetime i64 · since i64 · earlier_max i64 ·
//! raised_at i64 (both 0: no earlier bound) · cursor_len u32 · cursor bytes ·
//! n_ids u64 · n_ids × (fp u64, exp u32) · n_rules u64 · n_rules × (fp u64, revoked_at i64,
//! kind u8) · SHA-256 of everything before.
//!
//! `"JWTGREV1"` files (no lifetime fields) are still read; their bound counts as unknown,
//! so the configured one is taken as it is.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::LifetimeBound;
use super::list::{RevocationList, RuleValue};
use super::record::Kind;

const MAGIC: &[u8; 8] = b"JWTGREV2";
const MAGIC_V1: &[u8; 8] = b"JWTGREV1";
const MAX_CURSOR: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid jwtgate snapshot ({why})")]
    Corrupt { path: PathBuf, why: &'static str },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A restored list and the feed cursor it was written with.
pub struct Restored {
    pub list: RevocationList,
    pub cursor: Option<String>,
    /// The lifetime bound the snapshot was written under (`None`: a version-1 file).
    pub bound: Option<LifetimeBound>,
}

pub fn encode(list: &RevocationList, cursor: Option<&str>, bound: &LifetimeBound) -> Vec<u8> {
    let (ids, rules) = list.entries();
    let cursor = cursor.unwrap_or("");
    let cursor = if cursor.len() > MAX_CURSOR {
        ""
    } else {
        cursor
    };
    let mut out = Vec::with_capacity(64 + ids.len() * 12 + rules.len() * 17 + cursor.len());
    out.extend_from_slice(MAGIC);
    let (k0, k1) = list.key();
    out.extend_from_slice(&k0.to_le_bytes());
    out.extend_from_slice(&k1.to_le_bytes());
    let (earlier_max, raised_at) = bound.earlier.unwrap_or((0, 0));
    for v in [bound.max, bound.since, earlier_max, raised_at] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(cursor.len() as u32).to_le_bytes());
    out.extend_from_slice(cursor.as_bytes());
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for (fp, exp) in ids {
        out.extend_from_slice(&fp.to_le_bytes());
        out.extend_from_slice(&exp.to_le_bytes());
    }
    out.extend_from_slice(&(rules.len() as u64).to_le_bytes());
    for (fp, r) in rules {
        out.extend_from_slice(&fp.to_le_bytes());
        out.extend_from_slice(&r.revoked_at.to_le_bytes());
        out.push(r.kind as u8);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
}

pub fn decode(bytes: &[u8]) -> Result<Restored, &'static str> {
    if bytes.len() < MAGIC.len() + 32 || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_V1) {
        return Err("bad header");
    }
    let v2 = &bytes[..8] == MAGIC;
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref() != digest {
        return Err("checksum mismatch");
    }
    let mut r = Reader { buf: &body[8..] };
    let key = (r.u64()?, r.u64()?);
    let bound = if v2 {
        let (max, since, earlier_max, raised_at) = (
            r.u64()? as i64,
            r.u64()? as i64,
            r.u64()? as i64,
            r.u64()? as i64,
        );
        if max <= 0 || earlier_max < 0 {
            return Err("lifetime bound out of range");
        }
        Some(LifetimeBound {
            max,
            since,
            earlier: (earlier_max > 0).then_some((earlier_max, raised_at)),
        })
    } else {
        None
    };
    let cursor_len = r.u32()? as usize;
    if cursor_len > MAX_CURSOR {
        return Err("cursor too long");
    }
    let cursor = std::str::from_utf8(r.take(cursor_len)?).map_err(|_| "cursor not UTF-8")?;
    let n_ids = r.u64()? as usize;
    if n_ids > r.buf.len() / 12 {
        return Err("id count out of range");
    }
    let mut ids = Vec::with_capacity(n_ids);
    for _ in 0..n_ids {
        ids.push((r.u64()?, r.u32()?));
    }
    let n_rules = r.u64()? as usize;
    if n_rules > r.buf.len() / 17 {
        return Err("rule count out of range");
    }
    let mut rules = Vec::with_capacity(n_rules);
    for _ in 0..n_rules {
        let fp = r.u64()?;
        let revoked_at = r.u64()? as i64;
        let kind = Kind::from_u8(r.take(1)?[0]).ok_or("unknown rule kind")?;
        rules.push((fp, RuleValue { revoked_at, kind }));
    }
    if !r.buf.is_empty() {
        return Err("trailing bytes");
    }
    let list = RevocationList::with_key(key);
    list.insert_raw(ids, rules);
    Ok(Restored {
        list,
        cursor: (!cursor.is_empty()).then(|| cursor.to_owned()),
        bound,
    })
}

/// Reads a snapshot. `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<Restored>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|why| SnapshotError::Corrupt {
            path: path.to_owned(),
            why,
        })
}

/// Moves an unusable snapshot aside (`<path>.corrupt-<unix time>`) so it is kept for
/// inspection and not read again.
pub fn move_aside(path: &Path, now: i64) -> Option<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{now}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).ok().map(|_| aside)
}

/// Writes atomically: a reader (or a crash) sees the old file or the new one, never half.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let err = |source| SnapshotError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A fresh random name, created exclusively (O_CREAT|O_EXCL never follows a symlink):
    // whoever can write to the directory cannot make jwtgate overwrite another file.
    let mut suffix = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut suffix);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp-");
    tmp.push(
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::list::Facts;
    use crate::revocation::record::{Record, Target};

    const BOUND: LifetimeBound = LifetimeBound {
        max: 3600,
        since: 1,
        earlier: None,
    };

    #[test]
    fn round_trip_keeps_every_record_and_the_key() {
        let l = RevocationList::new();
        l.apply(&[
            Record::Id {
                target: Target::Jti,
                id: "j1".into(),
                exp: 5000,
            },
            Record::Rule {
                target: Target::Subject,
                id: "alice".into(),
                iss: None,
                revoked_at: 1000,
            },
        ]);
        let bound = LifetimeBound {
            max: 7200,
            since: 50,
            earlier: Some((3600, 60)),
        };
        let bytes = encode(&l, Some("c-42"), &bound);
        let r = decode(&bytes).unwrap();
        assert_eq!(r.cursor.as_deref(), Some("c-42"));
        assert_eq!(r.bound, Some(bound));
        assert_eq!(r.list.key(), l.key());
        assert_eq!(r.list.len(), 2);
        let f = Facts {
            iss: "i",
            wso2: false,
            jti: Some("j1"),
            sub: None,
            client: None,
            entity_id: None,
            signature: "",
            signature_twin: None,
            iat: Some(1),
        };
        assert!(r.list.is_revoked(&f));
        assert_eq!(r.list.count(Kind::Subject), 1);
    }

    #[test]
    fn version_1_files_are_still_read_with_an_unknown_bound() {
        let l = RevocationList::new();
        l.apply(&[Record::Id {
            target: Target::Jti,
            id: "j1".into(),
            exp: 5000,
        }]);
        let v2 = encode(&l, Some("c"), &BOUND);
        // Version 1: the same without the four lifetime fields, under its own magic.
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&v2[8..24]);
        v1.extend_from_slice(&v2[56..v2.len() - 32]);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &v1);
        v1.extend_from_slice(digest.as_ref());
        let r = decode(&v1).unwrap();
        assert_eq!(r.bound, None);
        assert_eq!(r.cursor.as_deref(), Some("c"));
        assert_eq!(r.list.len(), 1);
    }

    #[test]
    fn any_damage_is_detected() {
        let l = RevocationList::new();
        l.apply(&[Record::Id {
            target: Target::Jti,
            id: "j1".into(),
            exp: 5000,
        }]);
        let bytes = encode(&l, None, &BOUND);
        for i in [0, 9, 30, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 5]).is_err());
        assert!(decode(b"").is_err());
    }

    #[test]
    fn write_never_follows_a_symlink_left_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("jwtgate-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.join("revocations.snapshot");
        // The old fixed temp name, planted as a symlink to another file.
        std::os::unix::fs::symlink(&victim, dir.join("revocations.snapshot.tmp")).unwrap();
        let l = RevocationList::new();
        write(&path, &encode(&l, None, &BOUND)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(decode(&std::fs::read(&path).unwrap()).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
