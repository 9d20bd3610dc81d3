//! The durable snapshot: the whole list (fingerprints, key, feed cursor) in one file,
//! written atomically (temp file, fsync, rename, fsync of the directory) and checked by a
//! SHA-256 trailer on restore.
//!
//! Layout (little endian):
//! `"JWTGREV3"` · key0 u64 · key1 u64 · max_lifetime i64 · since i64 · earlier_max i64 ·
//! raised_at i64 (both 0: no earlier bound) · cursor_len u32 · cursor bytes ·
//! 64 id blocks, each n u32 · n × (fp u64, exp u32) · 64 rule blocks, each n u32 ·
//! n × (fp u64, revoked_at i64, kind u8) · SHA-256 of everything before.
//!
//! One block per shard, written as that shard stands when its turn comes: the writer holds
//! one shard at a time, never a second copy of the list, and pushes go on meanwhile. The
//! mix of moments is still a state the list passed through record by record (records are
//! only added, or pruned once expired), and the cursor is read before the first block, so
//! everything it covers is in the file.
//!
//! Older files are still read: `"JWTGREV2"` (one block per section, its count a u64) and
//! `"JWTGREV1"` (v2 without the lifetime fields; its bound counts as unknown, so the
//! configured one is taken as it is).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::LifetimeBound;
use super::list::{Builder, RevocationList, RuleValue, SHARDS};
use super::record::Kind;

const MAGIC: &[u8; 8] = b"JWTGREV3";
const MAGIC_V2: &[u8; 8] = b"JWTGREV2";
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

/// The whole list as snapshot bytes (tests, benches, fuzzing; the service streams the same
/// bytes to the file with `save`).
pub fn encode(list: &RevocationList, cursor: Option<&str>, bound: &LifetimeBound) -> Vec<u8> {
    let mut out = Vec::new();
    encode_to(&mut out, list, cursor, bound).expect("writing to a Vec cannot fail");
    out
}

/// Feeds everything written through it to a SHA-256 as well.
struct Digesting<W> {
    inner: W,
    digest: aws_lc_rs::digest::Context,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot of `list` to `w`, shard by shard: no copy of the list is made, so
/// writing a snapshot of a million records costs a buffer and one shard, not another 12 MB.
pub(crate) fn encode_to<W: Write>(
    w: W,
    list: &RevocationList,
    cursor: Option<&str>,
    bound: &LifetimeBound,
) -> std::io::Result<()> {
    let cursor = cursor.unwrap_or("");
    let cursor = if cursor.len() > MAX_CURSOR {
        ""
    } else {
        cursor
    };
    let mut out = Digesting {
        inner: w,
        digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
    };
    out.write_all(MAGIC)?;
    let key = list.key();
    out.write_all(&key.0.to_le_bytes())?;
    out.write_all(&key.1.to_le_bytes())?;
    let (earlier_max, raised_at) = bound.earlier.unwrap_or((0, 0));
    for v in [bound.max, bound.since, earlier_max, raised_at] {
        out.write_all(&v.to_le_bytes())?;
    }
    out.write_all(&(cursor.len() as u32).to_le_bytes())?;
    out.write_all(cursor.as_bytes())?;
    for i in 0..SHARDS {
        let shard = list.id_shard(i);
        out.write_all(&(shard.len() as u32).to_le_bytes())?;
        for (fp, exp) in shard.iter() {
            out.write_all(&fp.to_le_bytes())?;
            out.write_all(&exp.to_le_bytes())?;
        }
    }
    for i in 0..SHARDS {
        let shard = list.rule_shard(i);
        out.write_all(&(shard.len() as u32).to_le_bytes())?;
        for (fp, r) in shard.iter() {
            out.write_all(&fp.to_le_bytes())?;
            out.write_all(&r.revoked_at.to_le_bytes())?;
            out.write_all(&[r.kind as u8])?;
        }
    }
    let Digesting { mut inner, digest } = out;
    inner.write_all(digest.finish().as_ref())?;
    inner.flush()
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
    if bytes.len() < MAGIC.len() + 32 {
        return Err("bad header");
    }
    let version = match &bytes[..8] {
        m if m == MAGIC => 3,
        m if m == MAGIC_V2 => 2,
        m if m == MAGIC_V1 => 1,
        _ => return Err("bad header"),
    };
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref() != digest {
        return Err("checksum mismatch");
    }
    let mut r = Reader { buf: &body[8..] };
    let key = (r.u64()?, r.u64()?);
    let bound = if version >= 2 {
        Some(read_bound(&mut r)?)
    } else {
        None
    };
    let cursor_len = r.u32()? as usize;
    if cursor_len > MAX_CURSOR {
        return Err("cursor too long");
    }
    let cursor = std::str::from_utf8(r.take(cursor_len)?).map_err(|_| "cursor not UTF-8")?;
    // Entries go straight into their shards (no intermediate list of every record). Version 3
    // has a block per shard (its count a u32), older versions one block (a u64).
    let blocks = if version == 3 { SHARDS } else { 1 };
    let shard = |block| (version == 3).then_some(block);
    let mut list = Builder::new();
    for block in 0..blocks {
        let n = block_len(&mut r, version, 12).map_err(|_| "id count out of range")?;
        list.reserve_ids(shard(block), n);
        for _ in 0..n {
            list.id(r.u64()?, r.u32()?);
        }
    }
    for block in 0..blocks {
        let n = block_len(&mut r, version, 17).map_err(|_| "rule count out of range")?;
        list.reserve_rules(shard(block), n);
        for _ in 0..n {
            let fp = r.u64()?;
            let revoked_at = r.u64()? as i64;
            let kind = Kind::from_u8(r.take(1)?[0]).ok_or("unknown rule kind")?;
            list.rule(fp, RuleValue { revoked_at, kind });
        }
    }
    if !r.buf.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Restored {
        list: list.finish(key),
        cursor: (!cursor.is_empty()).then(|| cursor.to_owned()),
        bound,
    })
}

fn read_bound(r: &mut Reader<'_>) -> Result<LifetimeBound, &'static str> {
    let (max, since, earlier_max, raised_at) = (
        r.u64()? as i64,
        r.u64()? as i64,
        r.u64()? as i64,
        r.u64()? as i64,
    );
    if max <= 0 || earlier_max < 0 {
        return Err("lifetime bound out of range");
    }
    Ok(LifetimeBound {
        max,
        since,
        earlier: (earlier_max > 0).then_some((earlier_max, raised_at)),
    })
}

/// A block's entry count, refused when more entries of `size` bytes than are left.
fn block_len(r: &mut Reader<'_>, version: u8, size: usize) -> Result<usize, &'static str> {
    let n = if version == 3 {
        r.u32()? as usize
    } else {
        r.u64()? as usize
    };
    if n > r.buf.len() / size {
        return Err("count out of range");
    }
    Ok(n)
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
    write_with(path, |f| f.write_all(bytes))
}

/// Streams the snapshot of `list` to `path`, atomically as [`write`] does.
pub(crate) fn save(
    path: &Path,
    list: &RevocationList,
    cursor: Option<&str>,
    bound: &LifetimeBound,
) -> Result<(), SnapshotError> {
    write_with(path, |f| {
        encode_to(
            std::io::BufWriter::with_capacity(1 << 16, f),
            list,
            cursor,
            bound,
        )
    })
}

fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), SnapshotError> {
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
        fill(&mut f)?;
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

    /// A file of the older layouts: one block per section, counts as u64.
    fn legacy(magic: &[u8; 8], bound: Option<[i64; 4]>, ids: &[(u64, u32)]) -> Vec<u8> {
        let mut f = magic.to_vec();
        f.extend_from_slice(&7u64.to_le_bytes());
        f.extend_from_slice(&9u64.to_le_bytes());
        for v in bound.iter().flatten() {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&1u32.to_le_bytes());
        f.push(b'c');
        f.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        for (fp, exp) in ids {
            f.extend_from_slice(&fp.to_le_bytes());
            f.extend_from_slice(&exp.to_le_bytes());
        }
        f.extend_from_slice(&0u64.to_le_bytes());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &f);
        f.extend_from_slice(digest.as_ref());
        f
    }

    #[test]
    fn version_1_and_2_files_are_still_read() {
        let ids: Vec<(u64, u32)> = (1..=300u64)
            .map(|k| (k.wrapping_mul(0x9e37_79b9_7f4a_7c15), 5000))
            .collect();
        let r = decode(&legacy(MAGIC_V2, Some([7200, 50, 3600, 60]), &ids)).unwrap();
        assert_eq!(r.list.key(), (7, 9));
        assert_eq!(
            r.bound,
            Some(LifetimeBound {
                max: 7200,
                since: 50,
                earlier: Some((3600, 60))
            })
        );
        assert_eq!((r.cursor.as_deref(), r.list.len()), (Some("c"), 300));
        // Version 1 has no lifetime fields: its bound is unknown.
        let r = decode(&legacy(MAGIC_V1, None, &ids)).unwrap();
        assert_eq!(r.bound, None);
        assert_eq!((r.cursor.as_deref(), r.list.len()), (Some("c"), 300));
        // Re-encoded, the same records in the current layout.
        let again = decode(&encode(&r.list, r.cursor.as_deref(), &BOUND)).unwrap();
        assert_eq!(again.list.len(), 300);
        assert_eq!(&encode(&again.list, Some("c"), &BOUND)[..8], MAGIC);
    }

    /// A snapshot taken while pushes go on holds every record applied before it started.
    #[test]
    fn a_snapshot_written_during_pushes_holds_everything_applied_before_it() {
        let l = std::sync::Arc::new(RevocationList::new());
        let jti = |k: u32| Record::Id {
            target: Target::Jti,
            id: format!("j{k}"),
            exp: 5000,
        };
        l.apply(&(0..2000).map(jti).collect::<Vec<_>>());
        let pusher = {
            let l = l.clone();
            std::thread::spawn(move || {
                for k in 2000..4000 {
                    l.apply(&[jti(k)]);
                }
            })
        };
        let mut sizes = Vec::new();
        while !pusher.is_finished() || sizes.is_empty() {
            let r = decode(&encode(&l, None, &BOUND)).unwrap();
            for k in 0..2000 {
                let f = Facts {
                    iss: "i",
                    wso2: false,
                    jti: Some(&format!("j{k}")),
                    sub: None,
                    client: None,
                    entity_id: None,
                    signature: "",
                    signature_twin: None,
                    iat: Some(1),
                };
                assert!(r.list.is_revoked(&f), "j{k} missing");
            }
            sizes.push(r.list.len());
        }
        pusher.join().unwrap();
        assert!(sizes.iter().all(|n| (2000..=4000).contains(n)), "{sizes:?}");
        assert_eq!(decode(&encode(&l, None, &BOUND)).unwrap().list.len(), 4000);
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
