//! The `WorkQueue` contract. The caller builds `work` with the given visibility timeout and a
//! redrive to `dead` after `max_receives` receives.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::{QueueError, WorkQueue};

pub const VISIBILITY: Duration = Duration::from_secs(2);
pub const MAX_RECEIVES: u32 = 2;

async fn receive_one(q: &dyn WorkQueue, wait: Duration) -> Option<crate::ports::Delivery> {
    let mut got = q.receive(1, wait).await.expect("receive");
    assert!(got.len() <= 1);
    got.pop()
}

pub async fn run(work: Arc<dyn WorkQueue>, dead: Arc<dyn WorkQueue>) {
    let w = work.as_ref();

    // send / receive / delete
    w.send("g1", vec!["a".into(), "b".into(), "c".into()])
        .await
        .expect("send");
    let mut bodies = Vec::new();
    let mut receipts = Vec::new();
    for _ in 0..10 {
        for d in w
            .receive(10, Duration::from_secs(1))
            .await
            .expect("receive")
        {
            assert_eq!(d.receive_count, 1);
            bodies.push(d.body);
            receipts.push(d.receipt);
        }
        if bodies.len() == 3 {
            break;
        }
    }
    bodies.sort();
    assert_eq!(bodies, vec!["a", "b", "c"]);
    assert!(
        w.receive(10, Duration::from_millis(300))
            .await
            .expect("receive")
            .is_empty(),
        "received messages are invisible"
    );
    for r in &receipts {
        w.delete(r).await.expect("delete");
    }
    tokio::time::sleep(VISIBILITY + Duration::from_millis(500)).await;
    assert!(
        w.receive(10, Duration::from_millis(300))
            .await
            .expect("receive")
            .is_empty(),
        "deleted messages never come back"
    );

    // redelivery after the visibility timeout, with a higher receive count and a new receipt
    w.send("g2", vec!["again".into()]).await.expect("send");
    let first = receive_one(w, Duration::from_secs(2))
        .await
        .expect("first delivery");
    assert_eq!(first.receive_count, 1);
    let second = receive_one(w, VISIBILITY + Duration::from_secs(3))
        .await
        .expect("redelivered after the visibility timeout");
    assert_eq!(second.body, "again");
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt, first.receipt);

    // extending keeps it invisible
    w.extend(&second.receipt, Duration::from_secs(6))
        .await
        .expect("extend");
    assert!(
        receive_one(w, VISIBILITY + Duration::from_secs(1))
            .await
            .is_none(),
        "an extended message stays invisible"
    );

    // after MAX_RECEIVES receives it goes to the dead-letter queue (on the next receive from
    // the work queue, as SQS does)
    assert!(
        receive_one(w, Duration::from_secs(8)).await.is_none(),
        "a message received MAX_RECEIVES times is not delivered again"
    );
    let dead_letter = receive_one(dead.as_ref(), Duration::from_secs(10))
        .await
        .expect("moved to the dead-letter queue after too many receives");
    assert_eq!(dead_letter.body, "again");
    dead.delete(&dead_letter.receipt)
        .await
        .expect("delete dead letter");

    // a stale receipt is reported, not silently accepted
    match w.delete(&first.receipt).await {
        Err(QueueError::InvalidReceipt) | Ok(()) => {}
        Err(e) => panic!("deleting with a stale receipt: {e}"),
    }
}
