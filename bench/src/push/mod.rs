//! `medlink-bench push`: one command to each of N connected recipients, the measurement of
//! the issue "Scale" (push at the outpatient team's scale).
//!
//! N recipients, each a distinct identity (`pt-00001` …), are held by several load processes
//! (`medlink-bench push-load`, spawned by this coordinator: one process may hold at most
//! ~20,000 sockets here, and the node needs about N itself). Over MQTT each subscribes at QoS 1
//! to its inbox `org/<node>/<identity>/cmd`; over SSE it reads `GET /v1/stream`; over long-poll
//! it polls `GET /v1/inbox`. Once all are connected and the node's memory has settled, the
//! coordinator reads the node's RSS, then sends one command to each recipient through
//! `POST /v1/messages` in batches of up to 1,000, from one sender (`--in-flight` requests at
//! once, 1 by default), and waits until every
//! recipient has its command (or `--deadline`). Each delivery is checked: a recipient that got
//! nothing is lost, one that got its command twice is duplicated (exit 3).
//!
//! Against mosquitto (`--broker mosquitto`) the same recipients subscribe to `push/<n>` and one
//! publisher connection publishes one QoS 1 message to each topic.
//!
//! `--storm --restart-cmd CMD` then restarts the node (CMD stops it and starts it again) while
//! the N recipients are connected, and times until every one is connected and subscribed
//! again. Logins go through [`auth::login`] only, so token logins are one more mode there.

pub mod auth;
pub mod creds;
mod http;
pub mod load;
mod loads;
mod mqtt;
pub mod proto;
mod recipient;
mod run;
mod send;
mod storm;

pub use run::{run, PushReport};
pub use storm::StormReport;

/// The broker under test.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    /// A medlink node: commands through its HTTP API to client inboxes.
    Medlink,
    /// A plain MQTT broker (the bench's mosquitto): QoS 1 publishes to `push/<n>`.
    Mosquitto,
}

/// How recipients are connected.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// MQTT 3.1.1, QoS 1 subscription, PUBACK per delivery.
    Mqtt,
    /// medlink's `GET /v1/stream` (server-sent events), acknowledged by `POST /v1/inbox/ack`.
    Sse,
    /// medlink's `GET /v1/inbox` long-polls, acknowledged by the next poll's cursor.
    Longpoll,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Sse => "sse",
            Transport::Longpoll => "longpoll",
        }
    }
}

/// What the recipients connect to and how: shared by the coordinator and its load processes.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The broker under test.
    #[arg(long, value_enum, default_value_t = Broker::Medlink)]
    pub broker: Broker,
    /// How recipients are connected (mosquitto: mqtt only).
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    pub transport: Transport,
    /// `host:port` of the MQTT listener (clear-text TCP).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// `host:port` of medlink's HTTP API (the sender posts there; SSE and long-poll
    /// recipients read there).
    #[arg(long)]
    pub http: Option<String>,
    /// medlink: the node's id (the recipients' inbox topics and the commands' `to.node`).
    #[arg(long)]
    pub node: Option<String>,
    /// Recipient identities are `<prefix>00001` …
    #[arg(long, default_value = "pt-")]
    pub prefix: String,
    /// Logins.
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    /// MQTT keepalive in seconds (recipients ping at this period; 0: no keepalive).
    #[arg(long, default_value_t = 120)]
    pub keepalive: u16,
    /// Seconds each long-poll asks to wait (the node shortens it to its `max_wait_s`).
    #[arg(long, default_value_t = 600)]
    pub poll_wait: u64,
    /// Connections being set up at once per load process. The default keeps the load
    /// processes together under a listen backlog of 128 (what medlink's listeners get): more
    /// SYNs at once overflow it, and the dropped ones wait out 1 s, 3 s TCP retransmits.
    #[arg(long, default_value_t = 24, value_parser = crate::positive)]
    pub connect_concurrency: usize,
    /// Longest reconnect delay of a recipient that lost its connection, ms (it starts at
    /// 100 ms and doubles, plus up to half again at random; the SDK's cap is 5 s).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_cap_ms: u64,
    /// SSE: connections per load process that carry the acknowledgements.
    #[arg(long, default_value_t = 4, value_parser = crate::positive)]
    pub ack_conns: usize,
    /// Connect every recipient from the default source address. By default each recipient
    /// on a loopback target connects from a loopback address of its own (127.100.x.y), as
    /// phones come from addresses of their own.
    #[arg(long)]
    pub one_source: bool,
}

impl Target {
    /// The login mode: `--auth`, or what the broker takes by default.
    pub fn auth_mode(&self) -> auth::AuthMode {
        self.auth.auth.unwrap_or(match self.broker {
            Broker::Medlink => auth::AuthMode::Password,
            Broker::Mosquitto => auth::AuthMode::None,
        })
    }

    /// Cross-flag rules clap cannot express; the error names the flags.
    pub fn validate(&self) -> Result<(), String> {
        match (self.broker, self.transport) {
            (Broker::Mosquitto, Transport::Mqtt) => {}
            (Broker::Mosquitto, t) => {
                return Err(format!(
                    "--transport {}: only mqtt with --broker mosquitto",
                    t.name()
                ))
            }
            (Broker::Medlink, _) => {
                if self.node.is_none() {
                    return Err("--node is required with --broker medlink".into());
                }
                if self.http.is_none() {
                    return Err(
                        "--http is required with --broker medlink (the sender posts there)".into(),
                    );
                }
            }
        }
        if self.transport == Transport::Mqtt && self.mqtt.is_none() {
            return Err("--mqtt is required with --transport mqtt".into());
        }
        Ok(())
    }

    /// The flags that reproduce this target in a load process.
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--broker".into(),
            match self.broker {
                Broker::Medlink => "medlink",
                Broker::Mosquitto => "mosquitto",
            }
            .into(),
            "--transport".into(),
            self.transport.name().into(),
            "--prefix".into(),
            self.prefix.clone(),
            "--keepalive".into(),
            self.keepalive.to_string(),
            "--poll-wait".into(),
            self.poll_wait.to_string(),
            "--connect-concurrency".into(),
            self.connect_concurrency.to_string(),
            "--ack-conns".into(),
            self.ack_conns.to_string(),
            "--reconnect-cap-ms".into(),
            self.reconnect_cap_ms.to_string(),
        ];
        for (flag, v) in [
            ("--mqtt", &self.mqtt),
            ("--http", &self.http),
            ("--node", &self.node),
        ] {
            if let Some(v) = v {
                a.extend([flag.to_string(), v.clone()]);
            }
        }
        if self.one_source {
            a.push("--one-source".into());
        }
        a.extend(self.auth.to_args(self.auth_mode()));
        a
    }
}

/// Options of `medlink-bench push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// What to connect to, and how.
    #[command(flatten)]
    pub target: Target,
    /// Recipients.
    #[arg(long, short = 'n', default_value_t = 1000, value_parser = crate::positive)]
    pub recipients: usize,
    /// Load processes holding the recipients.
    #[arg(long, default_value_t = 4, value_parser = crate::positive)]
    pub procs: usize,
    /// Commands per POST (the node takes at most 1,000); mosquitto: publishes per timing
    /// group.
    #[arg(long, default_value_t = 1000, value_parser = batch)]
    pub batch: usize,
    /// medlink: batches posted at once, each on its own connection (a backend's pool). 4
    /// gave the same time to the last delivery as 1 at 19,000 (the node is the limit).
    #[arg(long, default_value_t = 1, value_parser = crate::positive)]
    pub in_flight: usize,
    /// medlink: the sender's `identity:password` (a client identity at the node).
    #[arg(long, default_value = "push-sender:bench-push")]
    pub sender: String,
    /// The pid of the node (or mosquitto), whose RSS is read from `/proc/<pid>/status`.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// medlink: `host:port` of the node's metrics; SSE and long-poll runs wait there until
    /// the node holds every stream open (`medlink_http_polls_open`) before measuring.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Most seconds to wait for the node's RSS to settle once everyone is connected.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Most seconds for connecting every recipient.
    #[arg(long, default_value_t = 600)]
    pub connect_deadline: u64,
    /// Seconds from the first POST after which the run stops waiting and counts what has not
    /// arrived as lost.
    #[arg(long, default_value_t = 300)]
    pub deadline: u64,
    /// Connect the recipients and measure memory (and `--storm`), but send nothing: a storm
    /// measured without the push before it.
    #[arg(long)]
    pub no_push: bool,
    /// Seconds to keep listening after the last recipient got its command, to catch
    /// duplicates.
    #[arg(long, default_value_t = 1.0)]
    pub grace: f64,
    /// After the push, restart the node (`--restart-cmd`) and time until every recipient is
    /// connected and subscribed again (MQTT only).
    #[arg(long, requires = "restart_cmd")]
    pub storm: bool,
    /// Shell command that stops the node and starts it again (it may return before the new
    /// node listens); its last output line, if a number, is the new node's pid.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Most seconds for the storm's re-admissions.
    #[arg(long, default_value_t = 120)]
    pub storm_deadline: u64,
    /// Label copied into the JSON result.
    #[arg(long, default_value = "")]
    pub label: String,
}

impl PushArgs {
    /// Cross-flag rules; the error names the flags.
    pub fn validate(&self) -> Result<(), String> {
        self.target.validate()?;
        if self.storm && self.target.transport != Transport::Mqtt {
            return Err("--storm: only with --transport mqtt".into());
        }
        if self.target.broker == Broker::Medlink && !self.sender.contains(':') {
            return Err(format!(
                "--sender '{}': expected identity:password",
                self.sender
            ));
        }
        if self.procs > self.recipients {
            return Err(format!(
                "--procs {}: more load processes than --recipients {}",
                self.procs, self.recipients
            ));
        }
        Ok(())
    }
}

fn batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        Ok(_) => Err("must be 1 to 1000 (the node's batch limit)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The identity of recipient `idx` (0-based): `<prefix>00001` for 0.
pub fn identity(prefix: &str, idx: usize) -> String {
    format!("{prefix}{:05}", idx + 1)
}

/// The topic of recipient `idx` on a plain broker: `push/1` for 0.
pub fn plain_topic(idx: usize) -> String {
    format!("push/{}", idx + 1)
}
