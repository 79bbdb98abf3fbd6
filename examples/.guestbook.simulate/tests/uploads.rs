//! Uploads: stored byte for byte, and never outside the uploads dir.

mod common;

use std::path::PathBuf;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn an_uploaded_file_can_be_downloaded_byte_for_byte() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (ctype, body) = multipart("file", "photo.bin", &content);
    let resp = client()
        .post(gb.url("/upload"))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["name"], "photo.bin");
    assert_eq!(
        std::fs::read(data.path().join("uploads/photo.bin")).unwrap(),
        content
    );
    let got = client()
        .get(gb.url("/uploads/photo.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    let missing = client()
        .get(gb.url("/uploads/nothing.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // No temporary file is left behind.
    let names: Vec<PathBuf> = std::fs::read_dir(data.path().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, [data.path().join("uploads/photo.bin")]);
}

#[tokio::test]
async fn uploads_with_names_that_escape_the_uploads_dir_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let gb = Guestbook::start(data.path());
    for name in ["../escape.txt", "..", "a/b.txt", ".hidden"] {
        let (ctype, body) = multipart("file", name, b"evil");
        let resp = client()
            .post(gb.url("/upload"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "name {name:?}");
    }
    assert!(!data.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_dir(data.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    let resp = client()
        .get(gb.url("/uploads/..%2Fguestbook.db"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
