//! The SIP carrier against baresip (issue 18), a real softphone with the codecs carriers and
//! phones use (G.711, G.722, Opus): what a flow says is understood at the phone, what the
//! phone says is understood in the call's recording, and a key the phone sends (`sndcode`, as
//! RFC 4733) drives the flow. baresip's `sndfile` module dumps what it decoded to WAV: the
//! proof is that audio, transcribed, not a file's existence.

use crate::flows::{ended_flow, executed, recognize, stereo, stored_recording, FAR_END, MENU_TEXT};
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;
use vbin_media::tts::{piper::Piper, TtsProvider, TtsRequest};

/// The platform's default voice as the tests' platforms speak it (deterministic), loaded once
/// for every test.
fn voice() -> &'static Piper {
    static VOICE: std::sync::OnceLock<Piper> = std::sync::OnceLock::new();
    VOICE.get_or_init(|| {
        Piper::from_models_dir(&vbin_media::tts::piper::default_models_dir())
            .expect("the Piper voice (scripts/models installs it)")
            .deterministic()
    })
}

/// A baresip on its own ports with one account, `+15550009999@127.0.0.1`, that answers
/// every call at once and speaks a WAV file as its microphone.
struct Baresip {
    dir: PathBuf,
    sip_port: u16,
    ctrl_port: u16,
    child: Option<Child>,
}

impl Baresip {
    /// baresip offering and accepting only `codecs` (its names: "PCMU/8000/1",
    /// "G722/16000/1", "opus/48000/2"), saying `speech` half a second into each call and then
    /// keeping quiet (it hangs up when its file ends: the file lasts a minute).
    async fn start(codecs: &str, speech: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vbin-baresip-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("snd")).unwrap();
        // The phone speaks with the platform's voice (Piper): espeak-ng's, narrowed to 8 kHz,
        // is not understood by the tests' recognizer even before any network.
        let speech = voice()
            .synthesize(&TtsRequest::new(speech, "en-US"))
            .await
            .unwrap();
        let spoken = dir.join("spoken.raw");
        let bytes: Vec<u8> = speech.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&spoken, bytes).unwrap();
        // baresip's file source takes only a file in the first codec's rate and channels.
        let mut first = codecs.split(',').next().unwrap().split('/').skip(1);
        let rate = first.next().unwrap_or("8000");
        let channels = first.next().unwrap_or("1");
        let far = dir.join("far.wav");
        let ok = Command::new("sox")
            .args([
                "-t",
                "raw",
                "-r",
                "16000",
                "-e",
                "signed-integer",
                "-b",
                "16",
                "-c",
                "1",
            ])
            .arg(&spoken)
            .args(["-r", rate, "-c", channels, "-b", "16"])
            .arg(&far)
            .args(["pad", "2", "60"])
            .status()
            .expect("sox must be installed (scripts/services installs it)")
            .success();
        assert!(ok, "sox failed");
        // Ports are picked free and then handed to baresip, so another test can take one in
        // between (baresip also binds TLS on the SIP port + 1 and RTP on its range): a start
        // that fails with "Address already in use" is retried on fresh ports.
        for attempt in 1.. {
            match Self::spawn(&dir, &far, codecs) {
                Ok(b) => return b,
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("baresip did not start: {log}"),
            }
        }
        unreachable!()
    }

    /// One try at starting baresip on fresh ports: it, or what it printed when it exited.
    fn spawn(dir: &Path, far: &Path, codecs: &str) -> Result<Self, String> {
        // baresip also listens for TLS on the SIP port + 1: keep the control port off it.
        let sip_port = loop {
            let p = free_port();
            if p < u16::MAX - 1 {
                break p;
            }
        };
        let ctrl_port = loop {
            let p = free_port();
            if p != sip_port + 1 && p != sip_port {
                break p;
            }
        };
        let rtp = free_port() & !1;
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:{sip_port}\n\
                 net_interface 127.0.0.1\n\
                 audio_player aubridge,nowhere\n\
                 audio_alert aubridge,nowhere\n\
                 audio_source aufile,{far}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\nmodule g722.so\nmodule opus.so\n\
                 module aufile.so\nmodule aubridge.so\nmodule sndfile.so\n\
                 module_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n\
                 ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
                 snd_path {snd}\n\
                 rtp_ports {rtp}-{}\n",
                rtp + 10,
                far = far.display(),
                snd = dir.join("snd").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:+15550009999@127.0.0.1>;regint=0;answermode=auto;audio_codecs={codecs}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("out.txt")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip must be installed (scripts/services installs it)");
        let log = || read_log(dir);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", ctrl_port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exited ({status}): {}", log()));
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("baresip never listened: {}", log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Baresip {
            dir: dir.to_path_buf(),
            sip_port,
            ctrl_port,
            child: Some(child),
        })
    }

    /// What baresip printed.
    fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// Runs a command of baresip's control socket (a netstring of JSON); its response.
    async fn command(&self, command: &str, params: &str) -> Value {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.ctrl_port))
            .await
            .unwrap();
        let msg = json!({"command": command, "params": params, "token": "vbin"}).to_string();
        s.write_all(format!("{}:{msg},", msg.len()).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "baresip closed its control socket");
                buf.extend_from_slice(&chunk[..n]);
                // Netstrings: "len:json,"; events may come before the response.
                while let Some(colon) = buf.iter().position(|&b| b == b':') {
                    let len: usize = std::str::from_utf8(&buf[..colon]).unwrap().parse().unwrap();
                    if buf.len() < colon + 1 + len + 1 {
                        break;
                    }
                    let v: Value =
                        serde_json::from_slice(&buf[colon + 1..colon + 1 + len]).unwrap();
                    buf.drain(..colon + 1 + len + 1);
                    if v["response"] == true {
                        return v;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("baresip did not answer {command}: {}", self.log()))
    }

    /// The audio baresip decoded from its calls (the `sndfile` dumps, written when a call
    /// ends), as its rate and 16 kHz mono samples.
    fn heard(&self) -> (u32, Vec<i16>) {
        let dumps = self.dir.join("snd");
        let file = wait_for_file(&dumps, "-dec.wav");
        let (rate, mono) = read_wav(&file);
        (rate, to_16k(rate, &mono))
    }
}

/// What the baresip started in `dir` printed.
fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out.txt")).unwrap_or_default()
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one file of `dir` ending in `suffix`, once it is complete (baresip writes a dump's
/// header when the call ends).
fn wait_for_file(dir: &Path, suffix: &str) -> PathBuf {
    let t = Instant::now();
    loop {
        let found = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(suffix));
        if let Some(p) = found {
            let bytes = std::fs::read(&p).unwrap_or_default();
            if bytes.len() > 44 && u32::from_le_bytes(bytes[40..44].try_into().unwrap()) > 0 {
                return p;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no complete *{suffix} in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 16-bit PCM WAV's rate and its channels averaged to mono.
fn read_wav(path: &Path) -> (u32, Vec<i16>) {
    let wav = std::fs::read(path).unwrap();
    assert_eq!(&wav[0..4], b"RIFF", "{}", path.display());
    // Walk the chunks: libsndfile may put others before "data".
    let (mut rate, mut channels, mut at) = (0u32, 1usize, 12usize);
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &wav[at + 8..(at + 8 + len).min(wav.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            assert_eq!(u16::from_le_bytes([body[14], body[15]]), 16, "16-bit");
        } else if id == b"data" {
            let samples: Vec<i16> = body
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            let mono = samples
                .chunks_exact(channels)
                .map(|f| (f.iter().map(|&v| i32::from(v)).sum::<i32>() / channels as i32) as i16)
                .collect();
            return (rate, mono);
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// `audio` at `rate` Hz brought to 16 kHz.
fn to_16k(rate: u32, audio: &[i16]) -> Vec<i16> {
    let mut r = vbin_media::resample::Resampler::new(rate, 16_000).unwrap();
    let n = r.input_frame_len();
    let mut out = Vec::new();
    for frame in audio.chunks_exact(n) {
        r.process(frame, &mut out).unwrap();
    }
    out
}

/// A trunk of the customer `tok` to `phone`, offering `codecs` (the API's names).
async fn trunk_to(env: &Env, tok: &str, phone: &Baresip, codecs: &[&str]) -> String {
    id_of(
        &env.client(tok)
            .create(
                "/v1.0/trunks",
                json!({"name": "baresip", "host": "127.0.0.1", "port": phone.sip_port,
                       "transport": "udp", "codecs": codecs}),
            )
            .await,
    )
}

/// A phone answering in `codecs.1` (baresip's name) and saying [`FAR_END`], called over a
/// trunk offering `codecs.0` (the API's name) by a call running `actions`: the phone, the
/// call and its flow once ended (within `secs`).
async fn call_a_phone(
    env: &Env,
    tok: &str,
    codecs: (&str, &str),
    actions: Value,
    secs: u64,
) -> (Baresip, Uuid, Value) {
    let phone = Baresip::start(codecs.1, FAR_END).await;
    let trunk = trunk_to(env, tok, &phone, &[codecs.0]).await;
    let call = env
        .calls(
            tok,
            &["+15550009999"],
            json!({"trunk_id": trunk, "actions": actions}),
        )
        .await[0];
    let af = ended_flow(env, tok, call, Duration::from_secs(secs)).await;
    (phone, call, af)
}

/// One call in each codec to a phone answering in it: the flow's talk is understood at the
/// phone (its decoded audio transcribed), the phone's speech in the call's recording, and the
/// phone decoded at the codec's own rate (8 kHz G.711, 16 kHz G.722, 48 kHz Opus).
#[tokio::test]
async fn a_flows_talk_is_understood_by_a_phone_in_g711_g722_and_opus() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let codecs = [
        ("PCMU", "PCMU/8000/1", 8_000),
        ("G722", "G722/16000/1", 16_000),
        ("opus", "opus/48000/2", 48_000),
    ];
    let runs = codecs.map(|(ours, theirs, rate)| {
        let env = &env;
        let tok = &tok;
        async move {
            let (phone, call, af) = call_a_phone(
                env,
                tok,
                (ours, theirs),
                json!([
                    {"type": "recording_start"},
                    {"type": "talk", "option": {"text": "Hello Ann. Press one for support or two for sales."}},
                    {"type": "sleep", "option": {"duration": 1500}},
                    {"type": "hangup"},
                ]),
                60,
            )
            .await;
            assert_eq!(
                executed(&af),
                ["recording_start", "talk", "sleep", "hangup"],
                "{ours}: {af}\n{}",
                phone.log()
            );
            let (heard_rate, heard) = phone.heard();
            let (_, wav) = stored_recording(env, tok, call).await;
            let (far, _) = stereo(&wav);
            (ours, rate, heard_rate, recognize(&heard).await, recognize(&far).await, phone.log())
        }
    });
    for (codec, rate, heard_rate, at_phone, from_phone, log) in
        futures::future::join_all(runs).await
    {
        assert_eq!(
            heard_rate, rate,
            "{codec}: the phone decoded another codec\n{log}"
        );
        assert_eq!(at_phone, MENU_TEXT, "{codec}: what the phone heard\n{log}");
        assert_eq!(from_phone, FAR_END, "{codec}: what the phone said\n{log}");
    }
}

/// A phone calls a number over its trunk (Opus, its first codec): the number's flow answers
/// and talks, the phone presses 1 (`sndcode`, sent as RFC 4733), the flow takes the key and
/// says so; the phone understood both prompts.
#[tokio::test]
async fn a_phone_calls_a_number_hears_its_menu_and_presses_a_key() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let phone = Baresip::start("opus/48000/2,G722/16000/1,PCMU/8000/1", "support").await;
    let trunk = id_of(
        &api.create(
            "/v1.0/trunks",
            json!({"name": "phones", "host": "127.0.0.1", "transport": "udp",
                   "codecs": ["PCMU", "G722", "opus"]}),
        )
        .await,
    );
    let flow = api
        .create(
            "/v1.0/flows",
            json!({"name": "menu", "actions": [
                {"type": "answer"},
                {"type": "talk", "option": {"text": "Hello Ann. Press one for support or two for sales."}},
                {"type": "digits_receive", "option": {"duration": 10000, "length": 1}},
                {"type": "talk", "option": {"text": "Support."}},
                // Long enough for the phone's RTCP reports (every ~5 s).
                {"type": "sleep", "option": {"duration": 6000}},
                {"type": "hangup"},
            ]}),
        )
        .await;
    api.create(
        "/v1.0/numbers",
        json!({"number": "+15557770001", "call_flow_id": flow["id"], "trunk_id": trunk}),
    )
    .await;
    let r = phone
        .command(
            "dial",
            &format!("sip:+15557770001@127.0.0.1:{}", env.platform.sip_port),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}\n{}", phone.log());
    // The key once the menu has been said: the flow waits in digits_receive.
    let call = wait_until("the incoming call", Duration::from_secs(15), || async {
        let (_, page) = api.get("/v1.0/calls?page_size=5").await;
        page["result"][0]["id"].as_str()?.parse::<Uuid>().ok()
    })
    .await;
    wait_until("the menu to be said", Duration::from_secs(20), || async {
        let (_, v) = api
            .get(&format!("/v1.0/activeflows?reference_id={call}"))
            .await;
        let af = v["result"][0].clone();
        af["executed_actions"]
            .as_array()?
            .iter()
            .any(|a| a["type"] == "digits_receive")
            .then_some(())
    })
    .await;
    let r = phone.command("sndcode", "1").await;
    assert_eq!(r["ok"], true, "{r}\n{}", phone.log());
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(
        af["variables"]["voipbin.call.digits"],
        "1",
        "{af}\n{}",
        phone.log()
    );
    assert_eq!(
        executed(&af),
        [
            "answer",
            "talk",
            "digits_receive",
            "talk",
            "sleep",
            "hangup"
        ],
        "{af}"
    );
    let (rate, heard) = phone.heard();
    assert_eq!(
        rate,
        48_000,
        "the phone's first codec, Opus\n{}",
        phone.log()
    );
    assert_eq!(recognize(&heard).await, format!("{MENU_TEXT} support"));
    // The phone's RTCP reports of our stream arrived (it lost none of it).
    let m = env.metrics().await;
    let sample = |name: &str| metric(&m, name).unwrap_or_else(|| panic!("no {name} in\n{m}"));
    assert!(sample("vbin_rtcp_reports_received_total") >= 1.0, "{m}");
    assert_eq!(sample("vbin_rtcp_fraction_lost_sum"), 0.0, "{m}");
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (&c["status"], &c["direction"], &c["source"]),
        (
            &json!("completed"),
            &json!("incoming"),
            &json!("+15550009999")
        ),
        "{c}"
    );
}

/// Keys a flow sends (`digits_send`) reach the phone as RFC 4733 events, each once, in G.711
/// and in Opus (whose 48 kHz stream clock the keys' 8 kHz events ride on).
#[tokio::test]
async fn keys_a_flow_sends_reach_the_phone_as_rfc_4733() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let runs = [("PCMU", "PCMU/8000/1"), ("opus", "opus/48000/2")].map(|(ours, theirs)| {
        let (env, tok) = (&env, &tok);
        async move {
            let (phone, _, _) = call_a_phone(
                env,
                tok,
                (ours, theirs),
                json!([
                    {"type": "sleep", "option": {"duration": 500}},
                    {"type": "digits_send", "option": {"digits": "159#"}},
                    {"type": "sleep", "option": {"duration": 1000}},
                    {"type": "hangup"},
                ]),
                30,
            )
            .await;
            let _ = phone.heard(); // the call is over at the phone too
            let log = phone.log();
            // baresip: "received event: '1' (end=0)" when a key starts.
            let keys: String = log
                .lines()
                .filter(|l| l.starts_with("received event: '") && l.ends_with("(end=0)"))
                .filter_map(|l| l.chars().nth("received event: '".len()))
                .collect();
            (ours, keys, log)
        }
    });
    for (codec, keys, log) in futures::future::join_all(runs).await {
        assert_eq!(keys, "159#", "{codec}\n{log}");
    }
}
