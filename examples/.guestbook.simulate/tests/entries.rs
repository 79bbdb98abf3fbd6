//! Entries: adding, listing, paging, and several instances writing to one database.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn entries_posted_as_form_or_json_are_listed_in_order() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let c = client();
    let resp = c
        .post(gb.url("/entries"))
        .form(&[("text", "hello from a form")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let first: Value = resp.json().await.unwrap();
    let resp = c
        .post(gb.url("/entries"))
        .json(&serde_json::json!({ "text": "hello from json" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let second: Value = resp.json().await.unwrap();
    assert!(second["id"].as_i64().unwrap() > first["id"].as_i64().unwrap());

    let list = entries(&gb).await;
    let texts: Vec<&str> = list.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello from a form", "hello from json"]);
    assert_eq!(list[0]["id"], first["id"]);
    let created = list[0]["created_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.offset().is_utc()),
        "created_at is RFC 3339 UTC: {created}"
    );
}

#[tokio::test]
async fn the_html_page_shows_entries_with_markup_escaped() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let resp = client()
        .post(gb.url("/entries"))
        .form(&[("text", "<script>alert('pwned')</script>")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let page = client().get(gb.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
}

#[tokio::test]
async fn empty_or_too_long_entries_are_refused_and_not_stored() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    for text in ["", "   ", &"x".repeat(2001)] {
        let resp = client()
            .post(gb.url("/entries"))
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().is_some());
    }
    assert!(entries(&gb).await.is_empty());
}

#[tokio::test]
async fn entries_can_be_read_page_by_page() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let mut ids = Vec::new();
    for n in 0..5 {
        let resp = client()
            .post(gb.url("/entries"))
            .json(&serde_json::json!({ "text": format!("entry {n}") }))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].clone());
    }
    let page: Vec<Value> = client()
        .get(gb.url(&format!("/api/entries?after={}&limit=2", ids[1])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&Value> = page.iter().map(|e| &e["id"]).collect();
    assert_eq!(got, [&ids[2], &ids[3]]);
    let bad = client()
        .get(gb.url("/api/entries?after=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_adds_one_entry() {
    let data = tempfile::tempdir().unwrap();
    let a = Guestbook::start(data.path());
    let b = Guestbook::start(data.path());
    let mut ids = Vec::new();
    // The retry may land on another instance, as it does behind the front door.
    for gb in [&a, &b, &a] {
        let resp = client()
            .post(gb.url("/entries"))
            .header("idempotency-key", "client-7-request-42")
            .json(&serde_json::json!({ "text": "only once" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(entries(&b).await.len(), 1);
}

#[tokio::test]
async fn two_instances_writing_to_one_database_lose_no_entry() {
    let data = tempfile::tempdir().unwrap();
    let a = Guestbook::start(data.path());
    let b = Guestbook::start(data.path());
    const WRITERS_PER_INSTANCE: usize = 4;
    const ENTRIES_PER_WRITER: usize = 40;
    let mut tasks = Vec::new();
    for (name, gb) in [("a", &a), ("b", &b)] {
        for writer in 0..WRITERS_PER_INSTANCE {
            let url = gb.url("/entries");
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut ids = Vec::new();
                for n in 0..ENTRIES_PER_WRITER {
                    let resp = c
                        .post(&url)
                        .json(&serde_json::json!({ "text": format!("{name}-{writer}-{n}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED);
                    let body: Value = resp.json().await.unwrap();
                    ids.push(body["id"].as_i64().unwrap());
                }
                ids
            }));
        }
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let total = 2 * WRITERS_PER_INSTANCE * ENTRIES_PER_WRITER;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "every acknowledged id is distinct");
    let from_a = entries(&a).await;
    let from_b = entries(&b).await;
    assert_eq!(from_a.len(), total);
    assert_eq!(from_a, from_b);
}
