//! Recordings in an S3-compatible bucket: moto's S3 server (pinned, from PyPI; `scripts/services`
//! installs it into `~/.cache/vbin/moto`) plays the store, over the real S3 protocol (signed
//! requests, multipart uploads).

use crate::flows::{recognize, stereo, stored_recording, uuid_of};
use crate::support::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

/// A moto S3 server on its own port, killed on drop.
struct Moto {
    url: String,
    child: Child,
    http: reqwest::Client,
}

impl Moto {
    async fn start() -> Self {
        let bin = cache_dir().join("moto/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/services (it installs the pinned moto)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let m = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
            http: vbin_netguard::tls::client_builder().build().unwrap(),
        };
        wait_until("moto's S3 server", Duration::from_secs(30), || async {
            m.http.get(&m.url).send().await.is_ok()
        })
        .await;
        m
    }

    /// Makes a bucket (moto takes unsigned requests).
    async fn bucket(&self) -> String {
        let name = format!("vbin-{}", Uuid::new_v4().simple());
        let r = self
            .http
            .put(format!("{}/{name}", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating bucket: {}", r.status());
        name
    }

    /// The object's bytes, None if it does not exist.
    async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self
            .http
            .get(format!("{}/{bucket}/{key}", self.url))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => Some(r.bytes().await.unwrap().to_vec()),
            404 => None,
            s => panic!("GET {key}: {s}"),
        }
    }

    fn env<'a>(&'a self, bucket: &'a str) -> [(&'a str, &'a str); 5] {
        [
            ("VBIN_S3_BUCKET", bucket),
            ("VBIN_S3_ENDPOINT", &self.url),
            ("VBIN_S3_REGION", "us-east-1"),
            ("VBIN_S3_ACCESS_KEY_ID", "vbin-test"),
            ("VBIN_S3_SECRET_ACCESS_KEY", "vbin-test-secret"),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn recordings_are_stored_in_an_s3_bucket_downloaded_from_it_and_deleted_at_retention() {
    let moto = Moto::start().await;
    let bucket = moto.bucket().await;
    let mut vars = moto.env(&bucket).to_vec();
    vars.push(("VBIN_HOUSEKEEPING_SECS", "1"));
    let env = Env::start_with_env(&vars).await;
    let (customer, tok, _) = env.customer().await;
    let call = env
        .calls(
            &tok,
            &["+15550002100"],
            // The far end stays on until the flow hangs up: by default it hangs up 2 s after
            // the answer, and on a loaded machine the talk was once not synthesised by then
            // (an empty recording).
            json!({"actions": [
                {"type": "recording_start"},
                {"type": "talk", "option": {"text": "sales will call you back"}},
                {"type": "hangup"},
            ], "sandbox": {"script": [{"at_ms": 30000, "hangup": true}]}}),
        )
        .await[0];
    let (rec, wav) = stored_recording(&env, &tok, call).await;
    assert!(rec["error"].is_null(), "{rec}");
    let id = uuid_of(&rec);

    // The object is in the bucket, not in the data directory; the API serves it (with the
    // real sizes in its header) and the platform's talk is on the right channel.
    let key = format!("recordings/{customer}/{id}.wav");
    let object = moto.object(&bucket, &key).await.expect("the object");
    assert!(!env.data_dir().join("recordings").exists());
    assert_eq!(wav.len(), object.len());
    assert_eq!(wav[44..], object[44..], "the audio is the object's");
    assert_eq!(
        rec["size_bytes"].as_u64(),
        Some(object.len() as u64),
        "{rec}"
    );
    let (_, right) = stereo(&wav);
    assert_eq!(recognize(&right).await, "sales will call you back");

    // Past its retention, housekeeping deletes the object and the recording says so.
    sqlx::query(
        "UPDATE recording_files SET ended_at = now() - interval '31 days' WHERE recording_id = $1",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    let api = env.client(&tok);
    let deleted: Value = wait_until(
        "the recording's deletion",
        Duration::from_secs(20),
        || async {
            let (_, v) = api.get(&format!("/v1.0/recordings/{id}")).await;
            (v["status"] == "deleted").then_some(v)
        },
    )
    .await;
    assert!(moto.object(&bucket, &key).await.is_none(), "{deleted}");
    let (status, _) = env
        .get_bytes(&tok, &format!("/v1.0/recordings/{id}/file"))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_s3_store_streams_multipart_uploads_and_aborts_leave_nothing() {
    let moto = Moto::start().await;
    let bucket = moto.bucket().await;
    let cfg = vbin_storage::S3Config {
        bucket: bucket.clone(),
        endpoint: Some(moto.url.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("vbin-test".into()),
        secret_access_key: Some("vbin-test-secret".into()),
    };
    let store =
        vbin_storage::Store::s3(&cfg, vbin_netguard::tls::client_builder().build().unwrap())
            .unwrap();
    let key = "recordings/a/b.wav";
    // 7 MB: two parts of a multipart upload (5 MiB each at most).
    let chunk: Vec<u8> = (0..=255u8).cycle().take(1_000_003).collect();
    let mut w = store.writer(key).await.unwrap();
    for _ in 0..7 {
        w.write(&chunk).await.unwrap();
    }
    assert!(
        moto.object(&bucket, key).await.is_none(),
        "not visible before finish"
    );
    assert_eq!(w.finish().await.unwrap(), 7_000_021);
    let object = moto.object(&bucket, key).await.unwrap();
    assert_eq!(object.len(), 7_000_021);
    assert_eq!(&object[6_000_018..], &chunk[..]);
    assert_eq!(&store.head_bytes(key, 4).await.unwrap()[..], &chunk[..4]);
    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap();
    assert!(moto.object(&bucket, key).await.is_none());
    let mut w = store.writer(key).await.unwrap();
    w.write(b"partial").await.unwrap();
    w.abort().await.unwrap();
    assert!(moto.object(&bucket, key).await.is_none());
    // A bucket that does not exist is a clear error, not a hang.
    let missing = vbin_storage::Store::s3(
        &vbin_storage::S3Config {
            bucket: "no-such-bucket".into(),
            ..cfg
        },
        vbin_netguard::tls::client_builder().build().unwrap(),
    )
    .unwrap();
    let err = match missing.writer(key).await {
        Ok(_) => panic!("a writer to a missing bucket"),
        Err(e) => format!("{e:?}"),
    };
    assert!(err.contains("NoSuchBucket"), "{err}");
}
