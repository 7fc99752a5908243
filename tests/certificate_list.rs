//! The certificate list and search: substring search over subject and
//! serial (case-insensitive, wildcards taken literally, short terms too),
//! newest-first paging, organisation scope, and a `total` that stops
//! counting far past the page but says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use serde_json::{Value, json};

on_both_backends! {
    search_finds_subjects_and_serials => search_finds_subjects_and_serials;
    pages_are_newest_first_and_scoped => pages_are_newest_first_and_scoped;
    totals_stop_counting_far_past_the_page => totals_stop_counting_far_past_the_page;
    what_expires_soon_comes_soonest_first => what_expires_soon_comes_soonest_first;
}

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let r = app
        .get(token, &format!("/api/v1/certificates?{query}"))
        .await;
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

fn ids(listing: &Value) -> Vec<String> {
    listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// `total`, `total_exact` and the ids of one answer.
async fn found(app: &TestApp, token: &str, query: &str) -> (u64, bool, Vec<String>) {
    let l = list(app, token, query).await;
    (
        l["total"].as_u64().unwrap(),
        l["total_exact"].as_bool().unwrap(),
        ids(&l),
    )
}

async fn search_finds_subjects_and_serials(app: &TestApp) {
    let token = app.admin_token().await;
    let alpha = app.issue(&token, &["alpha-one.clm.test"]).await;
    let beta = app.issue(&token, &["beta-two.clm.test"]).await;
    let id = |c: &Value| c["id"].as_str().unwrap().to_string();

    // Subject substrings, in any case.
    assert_eq!(
        found(app, &token, "q=alpha-one").await,
        (1, true, vec![id(&alpha)])
    );
    assert_eq!(
        found(app, &token, "q=BETA-TWO.CLM").await,
        (1, true, vec![id(&beta)])
    );
    // Shorter than the trigram index can answer, still a substring.
    let (_, _, short) = found(app, &token, "q=ph").await;
    assert!(
        short.contains(&id(&alpha)) && !short.contains(&id(&beta)),
        "{short:?}"
    );

    // The whole serial, or its beginning, in any case, with or without
    // the colons tools print between its bytes.
    let serial = beta["serial"].as_str().unwrap();
    assert_eq!(
        found(app, &token, &format!("q={serial}")).await,
        (1, true, vec![id(&beta)])
    );
    let colons = serial
        .as_bytes()
        .chunks(2)
        .map(|b| std::str::from_utf8(b).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(
        found(app, &token, &format!("q={colons}")).await,
        (1, true, vec![id(&beta)])
    );
    let (_, _, by_start) = found(app, &token, &format!("q={}", &serial[..20])).await;
    assert_eq!(by_start, vec![id(&beta)]);
    // A serial is not searched from its middle: that is what makes a
    // serial's search a lookup in an index.
    let (_, _, by_middle) = found(app, &token, &format!("q={}", &serial[12..])).await;
    assert!(by_middle.is_empty(), "{by_middle:?}");

    // LIKE's wildcards match themselves only: no subject has `_` or `%`.
    for q in ["clm_test", "alpha%25one", "%25", "_"] {
        assert_eq!(found(app, &token, &format!("q={q}")).await.0, 0, "q={q}");
    }
    // FTS5 syntax is text too.
    for q in ["alpha%20OR%20beta", "%22alpha%22", "alpha*", "NEAR(alpha)"] {
        assert_eq!(found(app, &token, &format!("q={q}")).await.0, 0, "q={q}");
    }
    assert_eq!(found(app, &token, "q=nothing-like-this").await.0, 0);
}

async fn pages_are_newest_first_and_scoped(app: &TestApp) {
    let root = app.admin_token().await;
    let mut issued = Vec::new();
    for i in 0..5 {
        let c = app.issue(&root, &[&format!("page-{i}.clm.test")]).await;
        issued.push(c["id"].as_str().unwrap().to_string());
    }
    issued.reverse();
    let (total, exact, first) = found(app, &root, "q=page-&per_page=2").await;
    assert_eq!((total, exact), (5, true));
    assert_eq!(first, issued[..2]);
    let (_, _, second) = found(app, &root, "q=page-&per_page=2&page=2").await;
    assert_eq!(second, issued[2..4]);
    let (total, _, beyond) = found(app, &root, "q=page-&per_page=2&page=9").await;
    assert_eq!((total, beyond.len()), (5, 0));
    // A search with other filters keeps the order and the count.
    let (total, exact, valid) = found(app, &root, "q=page-&status=valid&per_page=2&page=2").await;
    assert_eq!((total, exact, valid), (5, true, issued[2..4].to_vec()));
    assert_eq!(found(app, &root, "q=page-&status=revoked").await.0, 0);

    // Another organisation's user sees none of them, by list or search.
    let org = app.create_org(&root, "elsewhere").await;
    let (_, other) = app
        .create_user(&root, &org, "viewer@elsewhere.test", &["requester"])
        .await;
    assert_eq!(found(app, &other, "").await.0, 0);
    assert_eq!(found(app, &other, "q=page-").await.0, 0);
    let serial = app
        .get(&root, &format!("/api/v1/certificates/{}", issued[0]))
        .await
        .json::<Value>()
        .await
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(found(app, &other, &format!("q={serial}")).await.0, 0);
}

/// 10,005 rows copied from one issued certificate, straight into the
/// database: the count horizon is 10,000 past the page's start, 1,000 for
/// a search.
async fn totals_stop_counting_far_past_the_page(app: &TestApp) {
    let root = app.admin_token().await;
    let template = app.issue(&root, &["template.clm.test"]).await;
    app.copy_certificate("template.clm.test", 10_005, "b0", &[]);

    let (total, exact, page) = found(app, &root, "q=bulk-").await;
    assert_eq!((total, exact, page.len()), (1_000, false, 50));
    let (total, exact, _) = found(app, &root, "q=bulk-&page=21").await;
    assert_eq!((total, exact), (2_000, false));
    // Unfiltered, the list's horizon.
    let (total, exact, _) = found(app, &root, "").await;
    assert_eq!((total, exact), (10_000, false));
    // From page 201 on (10,000 past) the count reaches the end: exact.
    let (total, exact, page) = found(app, &root, "q=bulk-&page=201").await;
    assert_eq!((total, exact, page.len()), (10_005, true, 5));
    // A narrow search is exact however many rows the table holds.
    let (total, exact, _) = found(app, &root, "q=bulk-4242.").await;
    assert_eq!((total, exact), (1, true));
    // CA certificates are never listed, nor counted, whichever way.
    let cas = app.sql(
        "secure",
        "SELECT count(*) FROM certificates WHERE is_ca AND subject LIKE '%Root CA%'",
    );
    assert_eq!(cas, "1");
    assert_eq!(found(app, &root, "q=root%20ca").await, (0, true, vec![]));
    assert_eq!(
        found(app, &root, "q=root%20ca&status=valid").await,
        (0, true, vec![])
    );

    // A common substring's page is the list's own order (on SQLite it is
    // found by walking the list), a rarer one's its matches sorted (on
    // SQLite from the trigram index): the same order either way. The
    // copies share one creation time, so the id orders them.
    let (_, _, listed) = found(app, &root, "per_page=200").await;
    let copies: Vec<&String> = listed.iter().filter(|id| **id != template["id"]).collect();
    let (_, _, common) = found(app, &root, "q=bulk-&per_page=100").await;
    assert_eq!(common.iter().collect::<Vec<_>>(), copies[..100]);
    let rare = list(app, &root, "q=bulk-42&per_page=200").await;
    assert_eq!(
        (rare["total"].as_u64(), rare["total_exact"].as_bool()),
        (Some(111), Some(true))
    );
    let rare_ids = ids(&rare);
    let mut newest_first = rare_ids.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(rare_ids, newest_first);
    assert!(
        rare["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| { c["subject"].as_str().unwrap().contains("bulk-42") })
    );
}

async fn what_expires_soon_comes_soonest_first(app: &TestApp) {
    let root = app.admin_token().await;
    let profile = app.default_profile_id(&root).await;
    let mut by_days = Vec::new();
    for days in [20, 5, 60, 10] {
        let id = app
            .request_certificate(
                &root,
                &json!({
                    "profile_id": profile,
                    "csr_pem": common::ec_csr(&[&format!("in-{days}-days.clm.test")]),
                    "validity_days": days,
                }),
            )
            .await;
        by_days.push((days, id));
    }
    by_days.sort();
    let soonest: Vec<String> = by_days
        .iter()
        .filter(|(d, _)| *d <= 30)
        .map(|(_, id)| id.clone())
        .collect();
    let (total, exact, listed) =
        found(app, &root, "expiring_within_days=30&q=-days.clm.test").await;
    assert_eq!((total, exact), (3, true));
    assert_eq!(listed, soonest, "soonest expiry first");
    let (_, _, second) = found(
        app,
        &root,
        "expiring_within_days=30&q=-days.clm.test&per_page=2&page=2",
    )
    .await;
    assert_eq!(second, soonest[2..]);
}
