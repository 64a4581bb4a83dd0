//! NDJSON sources in Azure Blob Storage (Azurite): the local server reads a container prefix
//! as it reads a folder, gzipped files included, and what it exports equals what was put.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use fhir_export::synth;
use integration_tests::azure::{emulator_env, new_container};
use integration_tests::{Options, TestServer, current_members, dataset, files_under, read_source};
use serde_json::Value;
use shared::ports::ObjectStore;

fn ids(by_type: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, BTreeSet<String>> {
    by_type
        .iter()
        .map(|(t, rs)| {
            let ids = rs
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            (t.clone(), ids)
        })
        .collect()
}

#[tokio::test]
async fn exports_from_a_container_prefix() {
    let Some((container, store)) = new_container("source", "").await else {
        return;
    };
    let url = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap();
    let (dir, _) = dataset(25);
    // Every generated file goes up under `data/`; one of them gzipped, as sources may be.
    let mut gzipped = false;
    for rel in files_under(dir.path()) {
        let bytes = std::fs::read(dir.path().join(&rel)).unwrap();
        let (key, body) = if !gzipped && rel.starts_with("Observation") && !rel.ends_with(".gz") {
            gzipped = true;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut enc, &bytes).unwrap();
            (format!("data/{rel}.gz"), enc.finish().unwrap())
        } else {
            (format!("data/{rel}"), bytes)
        };
        store.put(&key, Bytes::from(body)).await.unwrap();
    }
    assert!(gzipped, "the dataset has an Observation file to gzip");
    let source = read_source(dir.path());

    let t = TestServer::start(Options {
        source_url: Some(format!("az://{container}/data")),
        env: emulator_env(&url),
        ..Default::default()
    })
    .await;

    let status = t.start_export("/$export", "").await;
    let manifest = t.manifest(&status).await;
    let got = t.download(&manifest, "output").await;
    assert_eq!(ids(&got), ids(&source), "system export from the container");
    // The resources themselves, not only their ids.
    for (ty, rs) in &got {
        let mut want: Vec<&Value> = source[ty].iter().collect();
        let mut have: Vec<&Value> = rs.iter().collect();
        want.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
        have.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
        assert_eq!(have, want, "{ty}");
    }

    // A Group read from the container decides the patients.
    let group = source["Group"]
        .iter()
        .find(|g| g["id"] == synth::GROUP_SMALL)
        .expect("the small group");
    let members = current_members(group);
    assert!(!members.is_empty());
    let status = t
        .start_export(
            &format!("/Group/{}/$export", synth::GROUP_SMALL),
            "_type=Patient",
        )
        .await;
    let manifest = t.manifest(&status).await;
    let patients: BTreeSet<String> = t.download(&manifest, "output").await["Patient"]
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(patients, members);
}
