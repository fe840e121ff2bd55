//! The cluster directory's rules, held by both implementations: the in-process one of a
//! single `piped` and the Redis one (against a real `redis-server`), including leases
//! that expire, events other nodes see, and an outage of Redis.

mod common;

use common::redis::Redis;
use common::WAIT;
use pipe::cluster::*;
use std::time::{Duration, Instant};

fn holder(node: &str, owner: &str, tunnel: u64) -> Holder {
    Holder {
        node: node.into(),
        owner: owner.into(),
        tunnel,
        rules: None,
    }
}

/// A lease no test outlives unless it lets it expire.
const LONG: Duration = Duration::from_secs(60);

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        peer: "127.0.0.2:9200".into(),
        seen: 0,
        every_ms: 100,
        lease_ms: 0,
        since_renewal: None,
    }
}

/// One claim's renewal, as its node's renewal round sees it.
async fn renew(d: &dyn Directory, key: &ClaimKey, h: &Holder) -> Renewed {
    let held = [(key.clone(), h.clone())];
    let mut got = d.renew_all(&node(&h.node), &held, LONG).await.unwrap();
    got.pop().unwrap()
}

/// A Redis that starts empty opens its first epoch with a grace of the first
/// caller's lease: a 1 ms one here, so the tests' claims are not held for a minute.
async fn open_epoch(d: &dyn Directory) {
    let (key, h) = (ClaimKey::Tcp(1), holder("x", "x/0", 0));
    let deadline = Instant::now() + WAIT;
    loop {
        match d.claim(&key, &h, Duration::from_millis(1)).await.unwrap() {
            Claimed::Granted => return,
            Claimed::Recovering(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the epoch's grace never ended");
    }
}

/// One owner per key, takeover by the same owner from any node, compare-and-delete.
async fn claims_are_unique_and_owned(a: &dyn Directory, b: &dyn Directory) {
    let key = ClaimKey::Tcp(9000);
    let alice_a = holder("a", "alice/c1", 1);
    let bob_b = holder("b", "bob/c2", 2);
    assert_eq!(
        a.claim(&key, &alice_a, LONG).await.unwrap(),
        Claimed::Granted
    );
    // Another owner, on another node: refused, naming the holder.
    assert_eq!(
        b.claim(&key, &bob_b, LONG).await.unwrap(),
        Claimed::Taken(alice_a.clone())
    );
    assert_eq!(b.lookup(&key).await.unwrap(), Some(alice_a.clone()));
    // Nobody but the holder releases or renews it.
    assert!(!b.release(&key, &bob_b).await.unwrap());
    assert_eq!(renew(b, &key, &bob_b).await, Renewed::Lost(alice_a.clone()));
    assert_eq!(renew(a, &key, &alice_a).await, Renewed::Kept);
    // The same owner reconnected to node b takes it over; node a's hold is gone.
    let alice_b = holder("b", "alice/c1", 9);
    assert_eq!(
        b.claim(&key, &alice_b, LONG).await.unwrap(),
        Claimed::Granted
    );
    assert_eq!(a.lookup(&key).await.unwrap(), Some(alice_b.clone()));
    assert_eq!(
        renew(a, &key, &alice_a).await,
        Renewed::Lost(alice_b.clone())
    );
    assert!(!a.release(&key, &alice_a).await.unwrap());
    // Kinds are separate spaces: udp 9000 and a subdomain are free.
    let udp = ClaimKey::Udp(9000);
    let sub = ClaimKey::Subdomain("myapp".into());
    assert_eq!(a.claim(&udp, &bob_b, LONG).await.unwrap(), Claimed::Granted);
    assert_eq!(a.claim(&sub, &bob_b, LONG).await.unwrap(), Claimed::Granted);
    let mut all = b.claims().await.unwrap();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let want = vec![
        (key.clone(), alice_b.clone()),
        (udp.clone(), bob_b.clone()),
        (sub.clone(), bob_b.clone()),
    ];
    assert_eq!(all, want);
    // Released by its holder: free for anyone.
    assert!(b.release(&key, &alice_b).await.unwrap());
    assert_eq!(a.lookup(&key).await.unwrap(), None);
    assert_eq!(a.claim(&key, &bob_b, LONG).await.unwrap(), Claimed::Granted);
}

#[tokio::test]
async fn the_local_directory_keeps_the_rules() {
    let d = LocalDirectory::default();
    claims_are_unique_and_owned(&d, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_directory_keeps_the_rules_across_nodes() {
    let redis = Redis::start();
    let a = RedisDirectory::connect(&redis.url()).await.unwrap();
    let b = RedisDirectory::connect(&redis.url()).await.unwrap();
    open_epoch(&a).await;
    claims_are_unique_and_owned(&a, &b).await;
}

/// Polls `cond` until it holds, at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_nobody_renews_expires_with_its_lease() {
    let redis = Redis::start();
    let a = RedisDirectory::connect(&redis.url()).await.unwrap();
    let b = RedisDirectory::connect(&redis.url()).await.unwrap();
    let key = ClaimKey::Tcp(9100);
    let lease = Duration::from_millis(300);
    open_epoch(&a).await;
    let started = Instant::now();
    assert_eq!(
        a.claim(&key, &holder("a", "alice/c1", 1), lease)
            .await
            .unwrap(),
        Claimed::Granted
    );
    // Node a "died": nothing renews. Until the lease ends the claim stands...
    let bob = holder("b", "bob/c2", 2);
    if started.elapsed() < lease / 2 {
        assert!(matches!(
            b.claim(&key, &bob, LONG).await.unwrap(),
            Claimed::Taken(_)
        ));
    }
    // ...then it is free for anyone, and never held past its lease by much.
    eventually("the lease expired", || async {
        b.lookup(&key).await.unwrap().is_none()
    })
    .await;
    assert!(started.elapsed() >= lease);
    assert_eq!(b.claim(&key, &bob, LONG).await.unwrap(), Claimed::Granted);

    // Nodes register under a lease too.
    a.register_node(&node("a"), lease).await.unwrap();
    b.register_node(&node("b"), LONG).await.unwrap();
    let names = |v: Vec<NodeInfo>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
    let listed = b.nodes().await.unwrap();
    assert!(listed.iter().all(|n| n.seen > 0), "{listed:?}");
    if started.elapsed() < Duration::from_secs(10) {
        assert!(names(listed).contains(&"b".to_string()));
    }
    eventually("node a's registration expired", || async {
        names(b.nodes().await.unwrap()) == ["b"]
    })
    .await;
}

async fn next(events: &mut tokio::sync::broadcast::Receiver<DirEvent>) -> DirEvent {
    let got = tokio::time::timeout(WAIT, events.recv()).await;
    got.expect("an event within the wait").expect("no lag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_see_claims_and_releases_as_they_happen() {
    let redis = Redis::start();
    let a = RedisDirectory::connect(&redis.url()).await.unwrap();
    let b = RedisDirectory::connect(&redis.url()).await.unwrap();
    let mut events = b.subscribe();
    open_epoch(&a).await;
    // The subscription announces itself with a resync (claims before it are read
    // whole), perhaps before this receiver existed: a claim's event shows it is live.
    let mut live = false;
    for n in 0..40u16 {
        let probe = ClaimKey::Tcp(1000 + n);
        a.claim(&probe, &holder("a", "probe/0", 0), LONG)
            .await
            .unwrap();
        let wait = tokio::time::timeout(Duration::from_millis(250), async {
            loop {
                match next(&mut events).await {
                    DirEvent::Resync => continue,
                    other => return other,
                }
            }
        });
        if let Ok(ev) = wait.await {
            assert!(
                matches!(ev, DirEvent::Claimed(ClaimKey::Tcp(_), _)),
                "{ev:?}"
            );
            live = true;
            break;
        }
    }
    assert!(live, "no claim was ever announced");
    // Events of the probes that raced the subscription may still come: drain them.
    while let Ok(ev) = tokio::time::timeout(Duration::from_millis(100), next(&mut events)).await {
        assert!(matches!(
            ev,
            DirEvent::Claimed(ClaimKey::Tcp(_), _) | DirEvent::Resync
        ));
    }
    let key = ClaimKey::Subdomain("live".into());
    let h = holder("a", "alice/c1", 3);
    a.claim(&key, &h, LONG).await.unwrap();
    assert_eq!(
        next(&mut events).await,
        DirEvent::Claimed(key.clone(), Box::new(h.clone()))
    );
    // A refused claim changes nothing and says nothing.
    let other = holder("b", "bob/c2", 4);
    assert!(matches!(
        a.claim(&key, &other, LONG).await.unwrap(),
        Claimed::Taken(_)
    ));
    a.release(&key, &h).await.unwrap();
    assert_eq!(next(&mut events).await, DirEvent::Released(key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_quickly_and_redis_back_is_used_again() {
    let mut redis = Redis::start();
    let a = RedisDirectory::connect(&redis.url()).await.unwrap();
    let mut events = a.subscribe();
    let key = ClaimKey::Tcp(9300);
    let h = holder("a", "alice/c1", 1);
    open_epoch(&a).await;
    assert_eq!(a.claim(&key, &h, LONG).await.unwrap(), Claimed::Granted);

    redis.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let err = a.claim(&ClaimKey::Tcp(9301), &h, LONG).await.unwrap_err();
        assert!(matches!(err, DirError::Unavailable { .. }), "{err:?}");
        assert_eq!(err.to_string(), "cluster directory unavailable");
        // Bounded: a Forward waiting on it is answered, not hung.
        assert!(t.elapsed() < DIR_CALL_TIMEOUT * 3, "{:?}", t.elapsed());
    }

    // Back, empty, as after a restart without persistence: a new epoch. A key it
    // forgot is granted to nobody for a lease (its holder may still serve it)...
    redis.restart();
    let bob = holder("b", "bob/c2", 2);
    eventually("calls work again", || async {
        a.claim(&key, &bob, LONG).await.is_ok()
    })
    .await;
    assert!(
        matches!(a.claim(&key, &bob, LONG).await.unwrap(), Claimed::Recovering(left) if left > LONG / 2),
        "a forgotten key went to another owner"
    );
    // ...while its holder's next renewal writes it back, after which it is plainly taken.
    assert_eq!(renew(&a, &key, &h).await, Renewed::Reasserted);
    assert_eq!(a.lookup(&key).await.unwrap(), Some(h.clone()));
    assert_eq!(a.claim(&key, &bob, LONG).await.unwrap(), Claimed::Taken(h));
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(DirEvent::Resync)) => break,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("no resync after Redis came back: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_url_and_nothing_listening_are_clear_errors() {
    let err = RedisDirectory::connect("http://x").await.err().unwrap();
    assert!(
        matches!(err, DirError::Unavailable { ref detail } if detail.contains("invalid cluster URL")),
        "{err:?}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let err = RedisDirectory::connect(&format!("redis://127.0.0.1:{port}/"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, DirError::Unavailable { .. }), "{err:?}");
    assert!(t.elapsed() < DIR_CALL_TIMEOUT * 3);
}
