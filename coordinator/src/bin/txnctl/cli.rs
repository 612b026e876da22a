//! The command line of txnctl: every command, its subcommands and flags, as clap parses them.
//! The help text of each command is its documentation, so the words here are what an
//! operator reads in `txnctl --help`.

use clap::{Parser, Subcommand};
use txn_proto::pb::v1 as pb;

#[derive(Parser)]
#[command(
    name = "txnctl",
    version,
    about = "Operate a txnkit coordinator and its participants",
    after_help = "Exit status, for every command:\n  \
                  0  success (transfer, read, submit: the transaction committed)\n  \
                  1  error, one line on stderr: nothing was done, or the command failed (a \
                  forced outcome refused, a service unreachable); `txn list` also exits 1 \
                  after printing when a participant's in-doubt txns could not be read\n  \
                  2  usage error: an unknown command or flag, a bad flag value\n  \
                  3  transfer, read, submit: the transaction aborted\n  \
                  4  transfer, read, submit: the outcome is unknown, the call may have run \
                  (`txnctl txn show ID` tells)\n\
                  status, the lists, show, retry, forced outcomes, participant, failpoint and \
                  certs exit 0 or 1 (or 2). With --json, transfer, read, submit, `txn show`, \
                  `txn abort|commit` and the saga commands carry the transaction's \
                  \"outcome\": committed, aborted or unknown (not decided yet)."
)]
pub struct Cli {
    /// The coordinator's URL, or several coordinators' (over one etcd log) comma-separated:
    /// txnctl uses the first that answers, and sends a transaction on to the next when one
    /// refuses it before running it.
    #[arg(
        long,
        global = true,
        env = "TXNCTL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The read model's URL (for `txnctl readmodel`).
    #[arg(
        long,
        global = true,
        env = "TXNCTL_READMODEL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub readmodel: String,
    /// Bearer token for operator calls, when the services require one.
    #[arg(long, global = true, env = "TXNCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the services' certificates: turns TLS on.
    #[arg(long, global = true, env = "TXNCTL_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for services that demand one (mutual TLS).
    #[arg(long, global = true, env = "TXNCTL_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "TXNCTL_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Coordinator epoch and uptime, participants and their health, txn and saga counts.
    Status,
    /// Two-phase commit transactions: find, inspect, retry and settle stuck ones.
    #[command(subcommand)]
    Txn(TxnCmd),
    /// Sagas: list, inspect, retry parked compensations.
    #[command(subcommand)]
    Saga(SagaCmd),
    /// Participants, and the transactions each holds in doubt.
    #[command(subcommand)]
    Participant(ParticipantCmd),
    /// Move an amount between two accounts (accounts that do not exist yet hold 0).
    Transfer {
        /// Source account as PARTICIPANT/KEY, e.g. p1/alice.
        #[arg(long)]
        from: String,
        /// Destination account as PARTICIPANT/KEY.
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: i64,
        /// 2pc, saga or events (choreography: the debit commits at once and is answered
        /// "accepted"; the credit follows from the source's feed).
        #[arg(long, default_value = "2pc")]
        protocol: String,
        /// With --protocol events: wait until the transfer has settled (credited, or refunded
        /// after a refusal) and exit 0 only if it was credited (3 refunded, 4 not settled in
        /// time).
        #[arg(long)]
        wait: bool,
        /// Let the source go below zero (by default an overdraft aborts).
        #[arg(long)]
        allow_negative: bool,
        /// Idempotency key: running the same transfer again with the same key returns the
        /// first outcome instead of moving the money twice.
        #[arg(long)]
        client_txn_id: Option<String>,
    },
    /// Read accounts atomically through the coordinator (PARTICIPANT/KEY ...).
    Read {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Run a transaction described as JSON, from FILE or - for standard input.
    Submit { file: String },
    /// Each participant's change feed: its durable head, first kept offset, and each
    /// registered consumer's acknowledged offset and lag.
    Events {
        #[command(subcommand)]
        cmd: Option<EventsCmd>,
    },
    /// The read model (CQRS view built from every feed): balances, statements, its lag.
    #[command(subcommand)]
    Readmodel(ReadmodelCmd),
    /// Failpoints of services built with them (tests and the harness).
    #[command(subcommand)]
    Failpoint(FailpointCmd),
    /// Generate a throwaway CA and one certificate per node, for running a cluster with
    /// mutual TLS (not for production keys).
    Certs {
        /// Directory to write ca.pem and NAME.pem / NAME.key into.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Node names (each certificate is valid for localhost and 127.0.0.1, as server and
        /// client).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// The txn phases `txn list --state` can ask for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TxnListState {
    /// Asking for votes.
    Preparing,
    /// Every vote in, the decision being logged.
    Deciding,
    /// Commit decision logged, acks pending.
    Committing,
    /// Prepared at a participant, no decision at the coordinator.
    InDoubt,
}

impl TxnListState {
    pub fn to_wire(self) -> pb::TxnPhase {
        match self {
            TxnListState::Preparing => pb::TxnPhase::Preparing,
            TxnListState::Deciding => pb::TxnPhase::Deciding,
            TxnListState::Committing => pb::TxnPhase::Committing,
            TxnListState::InDoubt => pb::TxnPhase::InDoubt,
        }
    }
}

/// The saga states `saga list --state` can ask for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SagaListState {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// Compensation gave up; waiting for `saga retry`.
    Parked,
}

impl SagaListState {
    pub fn to_wire(self) -> pb::SagaPhase {
        match self {
            SagaListState::Running => pb::SagaPhase::Running,
            SagaListState::Compensating => pb::SagaPhase::Compensating,
            SagaListState::Completed => pb::SagaPhase::Completed,
            SagaListState::Compensated => pb::SagaPhase::Compensated,
            SagaListState::Parked => pb::SagaPhase::Parked,
        }
    }
}

#[derive(Subcommand)]
pub enum TxnCmd {
    /// Transactions in flight, committing, or in doubt at a participant.
    List {
        #[arg(long, value_enum)]
        state: Option<TxnListState>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Decision, each participant's state and ack, retries and last error, forced outcome; for
    /// a transfer of the events protocol, where it stands at its source and destination.
    Show {
        id: String,
        /// Events transfers: poll until the transfer has settled, printing each change.
        #[arg(long)]
        follow: bool,
    },
    /// Re-drive now: re-send Commit, or Abort a txn the coordinator has no decision for.
    Retry { id: String },
    /// Force ABORT; refused after a durable commit decision unless --heuristic.
    Abort {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        heuristic: bool,
    },
    /// Force COMMIT; refused unless every participant voted YES, unless --heuristic.
    Commit {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        heuristic: bool,
    },
}

#[derive(Subcommand)]
pub enum SagaCmd {
    /// Sagas, most recently updated first.
    List {
        #[arg(long, value_enum)]
        state: Option<SagaListState>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One saga's state, failed step, compensation attempts and last error.
    Show { id: String },
    /// Resume a parked saga's compensation now, with a fresh retry budget.
    Retry { id: String },
}

#[derive(Subcommand)]
pub enum ParticipantCmd {
    /// Every participant with its address, health and in-doubt count.
    List,
    /// Prepared txns a participant holds: age, participants, locks. NAME may also be the
    /// participant's URL, which works while the coordinator is down.
    InDoubt { name: String },
}

#[derive(Subcommand)]
pub enum EventsCmd {
    /// Every feed and its consumers (the default).
    List,
    /// This participant as a consumer of its peers' feeds (the events protocol): position,
    /// events applied, duplicates suppressed, link state.
    Inboxes,
    /// Durable events of a participant's feed from an offset.
    Show {
        participant: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Unregister a consumer that is gone for good, so it holds no events back.
    Forget {
        participant: String,
        consumer: String,
    },
}

#[derive(Subcommand)]
pub enum ReadmodelCmd {
    /// Balances from the view (PARTICIPANT/KEY ..., or every account), with the offset of
    /// each feed the answer reflects and its lag.
    Balances {
        accounts: Vec<String>,
        /// Only whole two-phase txns (a txn's events from different participants together).
        #[arg(long)]
        consistent: bool,
    },
    /// The transfers that touched an account, across services, most recent first.
    Statement {
        account: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        consistent: bool,
    },
    /// Each feed's position, lag, held events and link state.
    Status,
    /// Drop the view and replay every feed from offset 0 (refused if a feed no longer keeps
    /// offset 0).
    Rebuild,
}

#[derive(Subcommand)]
pub enum FailpointCmd {
    /// Arm a failpoint on NODE (coordinator, p1, ...): ACTION is crash, sleep(MS), pause, ...
    Set {
        node: String,
        name: String,
        action: String,
    },
    /// Disarm a failpoint.
    Clear { node: String, name: String },
    /// The failpoints of NODE and their actions.
    List { node: String },
}
