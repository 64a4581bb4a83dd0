//! Where a chunk's kept resources go: per-type NDJSON parts, or (for an export organized by
//! patient) one map file sorted by partition and owner; and the list of what was selected,
//! for Provenance chosen by association.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::WorkError;
use crate::job::{FileKind, StagedFile};
use crate::model::ResourceType;
use crate::ndjson::PartWriter;
use crate::ports::ObjectStore;

/// The partition of an owner: FNV-1a, stable across processes and releases.
pub(crate) fn partition_of(owner: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in owner.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(h % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Sort key of a resource inside its patient block: the Patient first, then by type.
pub(crate) fn type_key(t: ResourceType) -> String {
    if t == ResourceType::PATIENT {
        "0".to_owned()
    } else {
        format!("1{t}")
    }
}

/// A chunk's map output, held in memory (it is bounded by the chunk's size) and written
/// sorted by (partition, owner, type, arrival) with the offset where each partition starts,
/// so that a reduce task reads its partition with one ranged read per map file.
pub(crate) struct MapBuffer {
    partitions: u32,
    data: Vec<u8>,
    entries: Vec<MapEntry>,
    /// Kept resources in no patient's compartment: organized output has no block for them.
    pub(crate) omitted: u64,
}

struct MapEntry {
    partition: u32,
    key: Range<usize>,
    line: Range<usize>,
}

impl MapBuffer {
    pub(crate) fn new(partitions: u32) -> Self {
        MapBuffer {
            partitions: partitions.max(1),
            data: Vec::new(),
            entries: Vec::new(),
            omitted: 0,
        }
    }

    pub(crate) fn push(&mut self, owner: Option<&str>, t: ResourceType, line: &[u8]) {
        let Some(owner) = owner else {
            self.omitted += 1;
            return;
        };
        let start = self.data.len();
        self.data.extend_from_slice(owner.as_bytes());
        self.data.push(b'\t');
        self.data.extend_from_slice(type_key(t).as_bytes());
        let key = start..self.data.len();
        self.data.push(b'\t');
        let line_start = self.data.len();
        self.data.extend_from_slice(line);
        self.entries.push(MapEntry {
            partition: partition_of(owner, self.partitions),
            key,
            line: line_start..self.data.len(),
        });
    }

    pub(crate) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Writes the map file; `None` when nothing was kept.
    pub(crate) async fn finish(
        mut self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
    ) -> Result<Option<StagedFile>, WorkError> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let data = std::mem::take(&mut self.data);
        // Stable: equal keys keep their arrival order.
        self.entries.sort_by(|a, b| {
            (a.partition, &data[a.key.clone()]).cmp(&(b.partition, &data[b.key.clone()]))
        });
        let mut out = Vec::with_capacity(data.len() + self.entries.len());
        let mut offsets = vec![0u64; self.partitions as usize + 1];
        let mut next_partition = 0u32;
        for e in &self.entries {
            while next_partition <= e.partition {
                offsets[next_partition as usize] = out.len() as u64;
                next_partition += 1;
            }
            out.extend_from_slice(&data[e.key.start..e.line.end]);
            out.push(b'\n');
        }
        while next_partition <= self.partitions {
            offsets[next_partition as usize] = out.len() as u64;
            next_partition += 1;
        }
        let bytes = out.len() as u64;
        store.put(key, Bytes::from(out)).await?;
        Ok(Some(StagedFile {
            kind: FileKind::Map,
            resource_type: None,
            path: key.to_owned(),
            count: self.entries.len() as u64,
            bytes,
            continues: false,
            partition_offsets: offsets,
            encoding: Default::default(),
        }))
    }
}

/// Where an export chunk's kept lines go.
pub(crate) enum Sink {
    Files(PartWriter),
    Map(MapBuffer),
    /// Index chunks write no resources.
    Nothing,
}

impl Sink {
    pub(crate) async fn keep(
        &mut self,
        t: ResourceType,
        owner: Option<&str>,
        line: &[u8],
    ) -> Result<(), WorkError> {
        match self {
            Sink::Files(w) => w.write_line(line).await?,
            Sink::Map(m) => m.push(owner, t, line),
            Sink::Nothing => {}
        }
        Ok(())
    }

    pub(crate) async fn finish(
        self,
        store: &Arc<dyn ObjectStore>,
        dir: &str,
    ) -> Result<(Vec<StagedFile>, u64), WorkError> {
        match self {
            Sink::Files(w) => {
                let files = w.finish().await?;
                let n = files.iter().map(|f| f.count).sum();
                Ok((files, n))
            }
            Sink::Map(m) => {
                let key = format!("{dir}map.tsv");
                let n = m.len();
                Ok((m.finish(store, &key).await?.into_iter().collect(), n))
            }
            Sink::Nothing => Ok((Vec::new(), 0)),
        }
    }

    pub(crate) async fn abort(self) {
        if let Sink::Files(w) = self {
            w.abort().await;
        }
    }
}

/// Sorted, unique lines written as one staged file of `kind`; `None` when empty.
pub(crate) async fn write_sorted(
    store: &Arc<dyn ObjectStore>,
    mut lines: Vec<String>,
    kind: FileKind,
    key: &str,
) -> Result<Option<StagedFile>, WorkError> {
    if lines.is_empty() {
        return Ok(None);
    }
    lines.sort_unstable();
    lines.dedup();
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in &lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    let bytes = out.len() as u64;
    store.put(key, Bytes::from(out)).await?;
    Ok(Some(StagedFile {
        kind,
        resource_type: None,
        path: key.to_owned(),
        count: lines.len() as u64,
        bytes,
        continues: false,
        partition_offsets: Vec::new(),
        encoding: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("pat-000001", 7), partition_of("pat-000001", 7));
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let p = partition_of(&format!("pat-{i:06}"), 8);
            assert!(p < 8);
            seen.insert(p);
        }
        assert_eq!(seen.len(), 8);
        assert_eq!(partition_of("x", 0), 0);
    }

    #[tokio::test]
    async fn map_file_is_sorted_with_partition_offsets() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::adapters::local_fs::LocalFsStore::new(dir.path()).expect("store"));
        let obs = ResourceType::parse("Observation").expect("t");
        let mut m = MapBuffer::new(3);
        m.push(Some("b"), obs, b"{\"o\":1}");
        m.push(Some("a"), obs, b"{\"o\":2}");
        m.push(Some("b"), ResourceType::PATIENT, b"{\"p\":\"b\"}");
        m.push(None, obs, b"{\"o\":3}");
        m.push(Some("b"), obs, b"{\"o\":4}");
        assert_eq!(m.omitted, 1);
        let f = m
            .finish(&store, "m.tsv")
            .await
            .expect("finish")
            .expect("file");
        assert_eq!(f.count, 4);
        let text = std::fs::read_to_string(dir.path().join("m.tsv")).expect("read");
        let offsets = &f.partition_offsets;
        assert_eq!(offsets.len(), 4);
        assert_eq!(offsets[3] as usize, text.len());
        for p in 0..3u32 {
            let slice = &text[offsets[p as usize] as usize..offsets[p as usize + 1] as usize];
            for line in slice.lines() {
                let owner = line.split('\t').next().expect("owner");
                assert_eq!(partition_of(owner, 3), p);
            }
        }
        let b_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("b\t")).collect();
        assert_eq!(
            b_lines,
            vec![
                "b\t0\t{\"p\":\"b\"}",
                "b\t1Observation\t{\"o\":1}",
                "b\t1Observation\t{\"o\":4}"
            ]
        );
    }
}
