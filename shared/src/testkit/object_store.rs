//! The `ObjectStore` contract.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;

use crate::ports::{ObjectError, ObjectStore};

/// The bytes of `[start, end)` of an object, or a panic naming the key.
pub async fn read_all(store: &dyn ObjectStore, key: &str, start: u64, end: Option<u64>) -> Vec<u8> {
    store
        .read(key, start, end)
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"))
        .try_fold(Vec::new(), |mut acc, b| async move {
            acc.extend_from_slice(&b);
            Ok(acc)
        })
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"))
}

/// Runs the whole suite under `prefix` (which must be empty and unique to this run).
pub async fn run(store: Arc<dyn ObjectStore>, prefix: &str) {
    let p = |k: &str| format!("{prefix}{k}");
    let s = store.as_ref();

    // put / head / read / range
    s.put(&p("a/one.ndjson"), Bytes::from_static(b"0123456789"))
        .await
        .expect("put");
    let meta = s
        .head(&p("a/one.ndjson"))
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(meta.size, 10);
    assert_eq!(
        read_all(s, &p("a/one.ndjson"), 0, None).await,
        b"0123456789"
    );
    assert_eq!(read_all(s, &p("a/one.ndjson"), 3, Some(7)).await, b"3456");
    assert_eq!(read_all(s, &p("a/one.ndjson"), 8, None).await, b"89");
    assert!(s.head(&p("a/missing")).await.expect("head").is_none());
    match s.read(&p("a/missing"), 0, None).await {
        Err(ObjectError::NotFound(_)) => {}
        Err(e) => panic!("read of a missing object must be NotFound, got {e}"),
        Ok(_) => panic!("read of a missing object must fail"),
    }

    // streaming writer: nothing visible before finish; large objects in several pieces
    let mut w = s.writer(&p("b/big.ndjson")).await.expect("writer");
    let piece = Bytes::from(vec![b'x'; 3 * 1024 * 1024 + 17]);
    for _ in 0..4 {
        w.write(piece.clone()).await.expect("write");
    }
    assert!(
        s.head(&p("b/big.ndjson")).await.expect("head").is_none(),
        "visible before finish"
    );
    let size = w.finish().await.expect("finish");
    assert_eq!(size, 4 * piece.len() as u64);
    assert_eq!(
        s.head(&p("b/big.ndjson"))
            .await
            .expect("head")
            .map(|m| m.size),
        Some(size)
    );
    let tail = read_all(s, &p("b/big.ndjson"), size - 5, None).await;
    assert_eq!(tail, b"xxxxx");

    // abort leaves nothing
    let mut w = s.writer(&p("b/aborted.ndjson")).await.expect("writer");
    w.write(Bytes::from_static(b"partial"))
        .await
        .expect("write");
    w.abort().await.expect("abort");
    assert!(
        s.head(&p("b/aborted.ndjson"))
            .await
            .expect("head")
            .is_none()
    );

    // list by prefix, recursive and sorted
    s.put(&p("a/two.ndjson"), Bytes::from_static(b"2"))
        .await
        .expect("put");
    s.put(&p("a/sub/three.ndjson"), Bytes::from_static(b"3"))
        .await
        .expect("put");
    let keys: Vec<String> = s
        .list(&p("a/"))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        vec![
            p("a/one.ndjson"),
            p("a/sub/three.ndjson"),
            p("a/two.ndjson")
        ]
    );
    let keys: Vec<String> = s
        .list(&p("a/t"))
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec![p("a/two.ndjson")]);
    assert!(s.list(&p("nothing/")).await.expect("list").is_empty());

    // rename
    s.rename(&p("a/two.ndjson"), &p("c/deep/two.ndjson"))
        .await
        .expect("rename");
    assert!(s.head(&p("a/two.ndjson")).await.expect("head").is_none());
    assert_eq!(read_all(s, &p("c/deep/two.ndjson"), 0, None).await, b"2");
    match s.rename(&p("a/two.ndjson"), &p("c/x")).await {
        Err(ObjectError::NotFound(_)) => {}
        other => panic!("rename of a missing object must be NotFound, got {other:?}"),
    }
    // rename overwrites
    s.put(&p("c/over"), Bytes::from_static(b"old"))
        .await
        .expect("put");
    s.put(&p("c/new"), Bytes::from_static(b"new"))
        .await
        .expect("put");
    s.rename(&p("c/new"), &p("c/over"))
        .await
        .expect("rename over");
    assert_eq!(read_all(s, &p("c/over"), 0, None).await, b"new");

    // delete (missing is fine) and delete_prefix
    s.delete(&p("a/one.ndjson")).await.expect("delete");
    s.delete(&p("a/one.ndjson")).await.expect("delete again");
    assert!(s.head(&p("a/one.ndjson")).await.expect("head").is_none());
    let n = s.delete_prefix(&p("a/")).await.expect("delete_prefix");
    assert_eq!(n, 1);
    assert!(s.list(&p("a/")).await.expect("list").is_empty());
    let n = s.delete_prefix(prefix).await.expect("delete all");
    assert_eq!(n, 3, "b/big, c/deep/two and c/over were left");
    assert!(s.list(prefix).await.expect("list").is_empty());

    // keys that escape the store are refused
    for bad in ["../x", "/abs", "a/../../b"] {
        assert!(
            matches!(
                s.put(bad, Bytes::new()).await,
                Err(ObjectError::InvalidKey(_))
            ),
            "{bad} must be refused"
        );
    }
}
