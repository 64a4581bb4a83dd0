//! The README's first command, `fhir-export demo`: on an empty state folder it generates the
//! sample data, runs a system export over HTTP and leaves every resource in the output folder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use fhir_export::serve::ServeConfig;

/// Lines per resource type in the `.ndjson` files under `dir` (recursively), the type taken
/// from the file name (`Observation.ndjson`, `Observation-2.ndjson`).
fn lines_per_file(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".ndjson") {
                let text = std::fs::read_to_string(&path).unwrap();
                let t = name.split(['-', '.']).next().unwrap().to_owned();
                *out.entry(t).or_default() += text.lines().filter(|l| !l.is_empty()).count();
            }
        }
    }
    out
}

#[tokio::test]
async fn demo_exports_the_sample_data_end_to_end() {
    let state = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(state.path());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    fhir_export::demo::run(config).await.expect("demo");

    let source = lines_per_file(&state.path().join("sample-data"));
    assert!(source.len() > 5, "sample data: {source:?}");
    let exported = lines_per_file(&state.path().join("output"));
    assert_eq!(exported, source, "every sample resource exported once");
    let staging = state.path().join("output").join(".staging");
    assert!(
        !staging.exists() || staging.read_dir().unwrap().next().is_none(),
        "no staging left behind"
    );
}
