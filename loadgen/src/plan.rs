//! What a run is: its target, its connections and what they do, split over processes and
//! threads; and the phases every connection follows.

use std::net::IpAddr;
use std::sync::Arc;

use crate::client::{Behaviour, Echo, Fanout, Load, Publisher, Subscriber};
use crate::cycle::Churn;
use crate::nodes::{Layout, Nodes};
use crate::profile::{Mix, Profile};
use crate::target::Target;
use crate::tls::Connector;
use crate::upgrade::Upgrade;

/// Where the run stands; every connection watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Running,
    /// Sending stopped: collect the messages in flight, then close.
    Draining,
}

/// Which share of the connections a process runs.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

/// What each connection does.
pub enum Workload {
    Echo(Arc<Load>),
    Hold,
    Fanout(Arc<Fanout>),
    /// Connect, upgrade, close, again.
    Handshake,
    Churn(Churn),
}

pub struct Plan {
    /// The servers, and which connection goes to which.
    pub nodes: Nodes,
    pub connections: u32,
    pub threads: usize,
    /// This process's share: the connections whose id is `index` modulo `count`.
    pub process: Share,
    pub workload: Workload,
    /// What every upgrade request asks for.
    pub upgrade: Upgrade,
    /// How connections to each node start their TLS session: `Some` for a `wss://` node,
    /// in the order of `nodes`.
    pub tls: Vec<Option<Connector>>,
    /// Local addresses to connect from, in turn (empty: the kernel picks).
    pub source_ips: Vec<IpAddr>,
    /// The network each connection sees (fanout publishers excepted: they sit next to the
    /// server, as a backend does).
    pub mix: Mix,
    /// Handshakes in progress at once, per thread.
    pub connect_concurrency: usize,
    /// Connections started per second over the whole run (all threads and processes).
    pub ramp: Option<f64>,
    /// How long the end of the run waits for messages in flight.
    pub drain: std::time::Duration,
}

impl Plan {
    /// The address connection `id` connects from, if one was chosen.
    pub fn source_ip(&self, id: u32) -> Option<IpAddr> {
        self.source_ips
            .get(id as usize % self.source_ips.len().max(1))
            .copied()
    }

    /// Which statistics bucket, and which link profile, connection `id` gets: a profile of
    /// the mix, or (for a fanout publisher) the unshaped bucket after them; on its node.
    pub fn profile_of(&self, id: u32) -> (usize, Option<&Profile>) {
        let (profile, link) = self.profile_index(id);
        (self.layout().bucket(profile, self.node_of(id)), link)
    }

    /// Connection `id`'s bucket when it is connected to `node` (a client that moved).
    pub fn bucket_on(&self, id: u32, node: usize) -> usize {
        self.layout().bucket(self.profile_index(id).0, node)
    }

    fn profile_index(&self, id: u32) -> (usize, Option<&Profile>) {
        match &self.workload {
            Workload::Fanout(fanout) if fanout.is_publisher(id) => (self.mix.len(), None),
            _ => {
                let index = self.mix.assign(id);
                (index, self.mix.profiles().nth(index))
            }
        }
    }

    /// How the statistics buckets are laid out: per profile (and unshaped publishers), per
    /// node.
    pub fn layout(&self) -> Layout {
        Layout {
            profiles: self.mix.len() + 1,
            nodes: self.nodes.len(),
        }
    }

    /// The node connection `id` connects to first.
    pub fn node_of(&self, id: u32) -> usize {
        match &self.workload {
            Workload::Fanout(fanout) if fanout.is_publisher(id) => self.nodes.node_of(id, true),
            Workload::Fanout(fanout) => self.nodes.node_of(id - fanout.publishers, false),
            _ => self.nodes.node_of(id, false),
        }
    }

    /// The server connection `id` connects to first.
    pub fn target_of(&self, id: u32) -> &Target {
        self.nodes.target(self.node_of(id))
    }

    /// How a connection to `node` starts TLS, if the node is a `wss://` one.
    pub fn tls_of(&self, node: usize) -> Option<&Connector> {
        self.tls.get(node).and_then(Option::as_ref)
    }

    /// The connection ids worker thread `index` of this process runs.
    pub fn ids_of_thread(&self, index: usize) -> Vec<u32> {
        let share = self.process;
        (0..self.connections)
            .filter(|id| id % share.count == share.index)
            .filter(|id| (id / share.count) as usize % self.threads == index)
            .collect()
    }

    /// Connections this process opens.
    pub fn local_connections(&self) -> u64 {
        let share = self.process;
        (0..self.connections)
            .filter(|id| id % share.count == share.index)
            .count() as u64
    }

    /// What connection `id` does once open (`echo`, `hold` and `fanout`).
    pub fn behaviour(&self, id: u32) -> Option<Behaviour> {
        Some(match &self.workload {
            Workload::Echo(load) => Behaviour::Echo(Echo::new(id, load.clone())),
            Workload::Hold => Behaviour::Hold,
            Workload::Fanout(fanout) if fanout.is_publisher(id) => {
                Behaviour::Publisher(Publisher::new(id, fanout.clone()))
            }
            Workload::Fanout(fanout) => Behaviour::Subscriber(Subscriber::new(fanout.clone())),
            Workload::Handshake | Workload::Churn(_) => return None,
        })
    }

    /// Whether every connection runs unshaped and in the clear, so the io_uring engine can
    /// run it rather than the link model's tasks (which also carry TLS).
    pub fn unshaped(&self) -> bool {
        self.mix.profiles().all(Profile::is_ideal) && self.tls.iter().all(Option::is_none)
    }

    /// Whether connections open once and then do what their [`Behaviour`] says (`echo`,
    /// `hold`, `fanout`), rather than reconnect.
    pub fn behaviour_driven(&self) -> bool {
        !matches!(self.workload, Workload::Handshake | Workload::Churn(_))
    }

    /// Connection `id` will not publish after all (it could not connect): its count of
    /// zero is final.
    pub fn gave_up(&self, id: u32) {
        if let Workload::Fanout(fanout) = &self.workload
            && fanout.is_publisher(id)
        {
            fanout.publisher_stopped();
        }
    }
}
