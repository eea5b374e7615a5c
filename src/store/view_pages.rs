//! The stored view in pages (migration 0016). Each page holds the view
//! columns of the change rows whose ids hash to it, so a restart reads
//! about [`PAGES`] rows rather than one per change: at 100,000 changes,
//! handing each row over through sqlx was most of a restart.
//!
//! The change rows stay the record. Pages are a copy that counts only
//! while `branch_views.pages_at` equals its `updated_at`: every version's
//! write of the view sets `updated_at`, and only a version that writes the
//! pages sets `pages_at` with it.

use serde::{Deserialize, Serialize, Serializer};

use crate::model::{CoveredPath, OnBranch};

/// Pages per branch: a move touches few of them, and a restart at 100,000
/// changes reads pages of about 100 changes each.
const PAGES: u32 = 1024;

/// The first byte of every page; a page in another format is not used.
const PAGE_FORMAT: u8 = 1;

/// No page decompresses to more than this: its length prefix is read
/// before anything is allocated, so a damaged page cannot ask for 4 GiB.
const LARGEST_PAGE: usize = 64 << 20;

/// The page change `id` is kept on; stable across versions and platforms.
pub(super) fn page_of(id: &str) -> i64 {
    i64::from(crc32fast::hash(id.as_bytes()) % PAGES)
}

/// One change's view columns, with the same text its row holds.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry<'a> {
    pub id: &'a str,
    pub digest: &'a str,
    pub covered: &'a str,
    pub emails: &'a str,
    pub outline: &'a str,
    #[serde(serialize_with = "as_bytes")]
    pub packed: &'a [u8],
}

fn as_bytes<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// An [`Entry`]'s columns, owned: as a write works them out.
pub(super) struct Columns {
    pub id: String,
    pub digest: String,
    pub covered: String,
    pub emails: String,
    pub outline: String,
    pub packed: Vec<u8>,
}

impl Columns {
    /// The columns of change `id` as the view holds it.
    pub fn of(id: &str, held: &OnBranch, emails: &std::collections::BTreeSet<String>) -> Columns {
        let covered: Vec<CoveredPath> = held.covered(id);
        let (packed, outline) = held.stored();
        Columns {
            id: id.to_string(),
            digest: held.digest().as_str().to_string(),
            covered: serde_json::to_string(&covered).unwrap_or_default(),
            emails: serde_json::to_string(emails).unwrap_or_default(),
            outline,
            packed,
        }
    }

    pub fn entry(&self) -> Entry<'_> {
        Entry {
            id: &self.id,
            digest: &self.digest,
            covered: &self.covered,
            emails: &self.emails,
            outline: &self.outline,
            packed: &self.packed,
        }
    }
}

/// A page's stored bytes: its format byte, then its entries (postcard),
/// LZ4-compressed with their length in front.
pub(super) fn encode(entries: &[Entry<'_>]) -> Vec<u8> {
    let raw = postcard::to_allocvec(entries).expect("entries always serialize");
    let mut page = vec![PAGE_FORMAT];
    page.extend(lz4_flex::block::compress_prepend_size(&raw));
    page
}

/// The entries' bytes of a stored page, or `None` when it is in another
/// format or damaged.
pub(super) fn open(page: &[u8]) -> Option<Vec<u8>> {
    let (&format, block) = page.split_first()?;
    let size = u32::from_le_bytes(block.get(..4)?.try_into().ok()?) as usize;
    if format != PAGE_FORMAT || size > LARGEST_PAGE {
        return None;
    }
    lz4_flex::block::decompress_size_prepended(block).ok()
}

/// The entries in an opened page; `None` if anything follows them.
pub(super) fn entries(raw: &[u8]) -> Option<Vec<Entry<'_>>> {
    match postcard::take_from_bytes(raw).ok()? {
        (entries, []) => Some(entries),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_back_and_damage_is_refused() {
        let columns = Columns {
            id: "a".into(),
            digest: "sha256:00".into(),
            covered: "[]".into(),
            emails: "[\"a@example.com\"]".into(),
            outline: "{}".into(),
            packed: vec![0, 1, 2, 255],
        };
        let page = encode(&[columns.entry()]);
        let raw = open(&page).unwrap();
        let read = entries(&raw).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].id, read[0].emails), ("a", "[\"a@example.com\"]"));
        assert_eq!(read[0].packed, &[0, 1, 2, 255]);

        let mut other_format = page.clone();
        other_format[0] = PAGE_FORMAT + 1;
        assert!(open(&other_format).is_none());
        assert!(open(&page[..3]).is_none());
        assert!(open(&[]).is_none());
        // A length prefix that asks for 4 GiB is refused before allocating.
        let mut huge = page.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open(&huge).is_none());
        // Entries cut short, or followed by anything, do not read.
        assert!(entries(&raw[..raw.len() - 1]).is_none());
        let mut longer = raw.clone();
        longer.push(0);
        assert!(entries(&longer).is_none());
    }

    #[test]
    fn pages_are_spread_and_stable() {
        // Fixed values: a page number is stored, so it must not change
        // between versions.
        assert_eq!((page_of("a"), page_of("change-1")), (579, 964));
        let used: std::collections::BTreeSet<i64> = (0..10_000)
            .map(|i| page_of(&format!("change-{i}")))
            .collect();
        assert!(used.len() > 1000, "{}", used.len());
        assert!(used.iter().all(|p| (0..1024).contains(p)));
    }
}
