//! The `vbin bench` command line: which benchmark, and running it.

use crate::{
    ai, all, campaign_bench, commands, flows, lag, media, mixing, relay_bench, replay_bench,
    report, scale, sip, stt, webhooks_bench, ws, CampaignArgs, LagArgs, RelayArgs, ReplayArgs,
    WebhooksArgs,
};

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// N concurrent clients (in a child process) creating and hanging up calls over HTTP, to
    /// the command API alone and to the whole platform; the same events appended through a
    /// plain INSERT loop, cqrs-es's postgres-es and vbin's store; against the raw Postgres
    /// single-row INSERT rate of N connections as baseline.
    Commands(crate::commands::CommandsArgs),
    /// Read-after-write lag: commands at half the commands benchmark's throughput (measured
    /// first, in the same run) and the time until each is visible in the query API.
    Lag(LagArgs),
    /// Several processes of the command API and the projections side by side (1, 2, ...):
    /// commands/s, latency, CPU-seconds per process, commands per CPU-second, projection
    /// events/s and catch-up time, under the same load spread over them.
    Scale(scale::ScaleArgs),
    /// The relay draining a backlog of N events to JetStream (events/s), against the same
    /// number of messages of the same size published straight to JetStream as baseline.
    Relay(RelayArgs),
    /// Replay speed: a rebuild of the calls read model from a generated log of N events,
    /// against the raw Postgres read rate (COPY of the same rows) as baseline.
    Replay(ReplayArgs),
    /// Outbound campaign throughput: a campaign over N targets (answered calls), reporting
    /// calls dialed per second, against the raw Postgres single-row INSERT rate as baseline.
    Campaign(CampaignArgs),
    /// Webhook delivery: signed deliveries per second to a local receiver and the dispatch
    /// delay (event committed -> request received), against raw HTTP POSTs to the same
    /// receiver as baseline.
    Webhooks(WebhooksArgs),
    /// WebSocket gateway: connections held and events fanned out per second with the p99
    /// delivery latency, for each connection count, against a bare WebSocket broadcast server
    /// as baseline.
    Ws(ws::WsArgs),
    /// Media path on one core: G.711 samples/s (against a plain copy), resampler frames/s,
    /// AudioSocket sessions per core.
    Media(media::MediaArgs),
    /// Conferences on one core: members mixed in real time per core for 2 to 64 members,
    /// against the AudioSocket server's sessions per core (same run).
    Conference(mixing::MixingArgs),
    /// Bridges on one core: bridged call pairs per core at real time, against the same
    /// sessions unbridged and the AudioSocket server's sessions per core (same run).
    Bridge(mixing::MixingArgs),
    /// Call control: N concurrent sandbox calls running an IVR flow: real-time media sessions
    /// per core (against the AudioSocket server's, same run), frame pacing jitter and the
    /// latency from the far end's key to the next talk's first frame.
    Flows(flows::FlowsArgs),
    /// Real telephony: N concurrent calls over a SIP trunk to sipp echoing their RTP, each
    /// running a flow that talks: call set-up rate (against sipp calling sipp), calls with
    /// media per core (against the AudioSocket server's sessions per core, same run), RTP
    /// loss and frame pacing.
    Sip(sip::SipArgs),
    /// AI voice conversations: N sandbox calls whose callers ask questions an assistant
    /// answers by voice: voice-to-voice latency per turn (p50/p95) and its stages, with a
    /// zero-latency fake model (the platform's own cost) or the embedded one, and
    /// conversations per core.
    Ai(ai::AiArgs),
    /// Word error rate of the offline speech-to-text on real recorded prompts (Debian's
    /// asterisk-core-sounds-en-wav), through the media path's resampler.
    Stt(stt::SttArgs),
    /// Every benchmark in turn (each in its own process) and the machine's common baselines;
    /// one report (`report.json`, `report.md`).
    All(all::AllArgs),
    /// The read path: N clients GETting cached calls from the query API, against the same
    /// clients GETting `/healthz` on the same server, for several numbers of calls.
    Reads(crate::reads::ReadsArgs),
    /// Internal: the GET load generator of `bench reads`.
    #[command(hide = true)]
    LoadGet(crate::reads::LoadGetArgs),
    /// Internal: the load generator of `bench commands`.
    #[command(hide = true)]
    Load(crate::commands::LoadArgs),
    /// Internal: the bare broadcast server of `bench ws`'s baseline.
    #[command(hide = true)]
    WsBaselineServer(ws::BaselineServerArgs),
}

/// Runs a benchmark.
pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Commands(a) => report(commands::run(&a).await?, a.services.json.as_deref()),
        Which::Load(a) => crate::commands::load(&a).await,
        Which::Reads(a) => report(crate::reads::run(&a).await?, a.services.json.as_deref()),
        Which::LoadGet(a) => crate::reads::load_get(&a).await,
        Which::Lag(a) => report(lag(&a).await?, a.services.json.as_deref()),
        Which::Relay(a) => report(relay_bench(&a).await?, a.services.json.as_deref()),
        Which::Scale(a) => report(scale::run(&a).await?, a.services.json.as_deref()),
        Which::Replay(a) => report(replay_bench(&a).await?, a.services.json.as_deref()),
        Which::Campaign(a) => report(campaign_bench(&a).await?, a.services.json.as_deref()),
        Which::Webhooks(a) => report(webhooks_bench(&a).await?, a.services.json.as_deref()),
        Which::Ws(a) => report(ws::run(&a).await?, a.services.json.as_deref()),
        Which::Flows(a) => report(flows::run(&a).await?, a.services.json.as_deref()),
        Which::Sip(a) => report(sip::run(&a).await?, a.services.json.as_deref()),
        Which::Ai(a) => report(ai::run(&a).await?, a.services.json.as_deref()),
        Which::WsBaselineServer(a) => ws::baseline_server(&a).await,
        // Measures on a runtime of its own (one thread = one core), off this one.
        Which::Stt(a) => stt::run(&a).await,
        Which::All(a) => all::run(&a).await,
        Which::Media(a) => tokio::task::spawn_blocking(move || media::run(&a)).await?,
        Which::Conference(a) => {
            tokio::task::spawn_blocking(move || mixing::run_conference(&a)).await?
        }
        Which::Bridge(a) => tokio::task::spawn_blocking(move || mixing::run_bridge(&a)).await?,
    }
}
