//! Several servers in one run, as the nodes of a cluster behind a load balancer: connections
//! spread over `--url`s round robin, and for `fanout` the publishers on their own nodes
//! (`--publish-url`), so a subscriber on one node checks what a publisher on another sent.
//!
//! Each connection's statistics go to a bucket of its profile *and* its node, so the report
//! gives every node's share; the accounting itself (stamps, sequences, loss) never depends on
//! which node carried a message.

use serde_json::{Value, json};

use crate::stats::Stats;
use crate::target::{Target, UrlError};

/// The servers a run connects to, as given on the command line.
#[derive(Clone, Debug)]
pub struct Servers {
    /// Where connections go (`fanout`: the subscribers), round robin.
    pub urls: Vec<String>,
    /// `fanout`: where the publishers go, round robin; empty: the `urls`.
    pub publish_urls: Vec<String>,
}

/// Why a set of servers cannot make one run.
#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(
        "fanout: every --url and --publish-url must name the same topic, but `{0}` and `{1}` \
         have different paths"
    )]
    Topics(String, String),
}

impl Servers {
    /// One server.
    pub fn single(url: &str) -> Servers {
        Servers {
            urls: vec![url.to_owned()],
            publish_urls: Vec::new(),
        }
    }

    /// How a report names them: the URL, or every node's.
    pub fn label(&self) -> String {
        self.distinct().join(" ")
    }

    /// Every distinct URL, in the order first given (`--url`s, then `--publish-url`s).
    pub fn distinct(&self) -> Vec<&str> {
        let mut distinct: Vec<&str> = Vec::new();
        for url in self.urls.iter().chain(&self.publish_urls) {
            if !distinct.contains(&url.as_str()) {
                distinct.push(url);
            }
        }
        distinct
    }

    /// The command-line arguments that give these servers again (for worker processes).
    pub fn to_args(&self) -> Vec<String> {
        let urls = self
            .urls
            .iter()
            .flat_map(|u| ["--url".to_owned(), u.clone()]);
        let publish = self
            .publish_urls
            .iter()
            .flat_map(|u| ["--publish-url".to_owned(), u.clone()]);
        urls.chain(publish).collect()
    }

    /// Resolves every server once. With `same_path` (fanout), every URL must name the same
    /// topic: subscribers would otherwise miss what they are counted on receiving.
    pub fn resolve(&self, same_path: bool) -> Result<Nodes, ServersError> {
        let distinct = self.distinct();
        let targets = distinct
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if same_path {
            let topic = |t: &Target| t.path.split('?').next().unwrap_or("").to_owned();
            if let Some(other) = targets.iter().position(|t| topic(t) != topic(&targets[0])) {
                return Err(ServersError::Topics(
                    distinct[0].to_owned(),
                    distinct[other].to_owned(),
                ));
            }
        }
        let index = |url: &String| distinct.iter().position(|d| d == url).unwrap_or(0);
        let connect: Vec<usize> = self.urls.iter().map(index).collect();
        let publish = match self.publish_urls.is_empty() {
            true => connect.clone(),
            false => self.publish_urls.iter().map(index).collect(),
        };
        Ok(Nodes {
            targets,
            connect,
            publish,
        })
    }
}

/// The resolved servers, and which connection goes where.
#[derive(Clone, Debug)]
pub struct Nodes {
    /// One per distinct URL.
    targets: Vec<Target>,
    /// The nodes connections take in turn (indices into `targets`).
    connect: Vec<usize>,
    /// The nodes fanout publishers take in turn.
    publish: Vec<usize>,
}

impl Nodes {
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn target(&self, node: usize) -> &Target {
        &self.targets[node % self.targets.len()]
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The node of the `nth` connection (not counting publishers) or of publisher `nth`.
    pub fn node_of(&self, nth: u32, publisher: bool) -> usize {
        let turns = if publisher {
            &self.publish
        } else {
            &self.connect
        };
        turns[nth as usize % turns.len()]
    }

    /// The node a client that lost node `node` tries next: the next `--url` in turn, as a
    /// client with a list of servers (or a load balancer skipping a dead one) would.
    pub fn after(&self, node: usize) -> usize {
        let at = self.connect.iter().position(|&n| n == node).unwrap_or(0);
        self.connect[(at + 1) % self.connect.len()]
    }
}

/// How statistics buckets are laid out: profile-major, one per node within each profile.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The mix's profiles, and the bucket for unshaped fanout publishers after them.
    pub profiles: usize,
    pub nodes: usize,
}

impl Layout {
    pub fn buckets(self) -> usize {
        self.profiles * self.nodes
    }

    pub fn bucket(self, profile: usize, node: usize) -> usize {
        profile * self.nodes + node
    }

    /// The buckets added up per profile (what the report's profiles show), and per node.
    pub fn fold(self, buckets: &[Stats]) -> (Vec<Stats>, Vec<Stats>) {
        let mut by_profile = vec![Stats::default(); self.profiles];
        let mut by_node = vec![Stats::default(); self.nodes];
        for (index, stats) in buckets.iter().enumerate() {
            by_profile[index / self.nodes].merge(stats);
            by_node[index % self.nodes].merge(stats);
        }
        (by_profile, by_node)
    }
}

/// How many connections, and publishers, a run puts on each node.
pub fn assigned(nodes: &Nodes, connections: u32, publishers: u32) -> Vec<(u64, u64)> {
    let mut counts = vec![(0u64, 0u64); nodes.len()];
    for nth in 0..connections {
        counts[nodes.node_of(nth, false)].0 += 1;
    }
    for nth in 0..publishers {
        counts[nodes.node_of(nth, true)].1 += 1;
    }
    counts
}

/// One node's share of a run.
pub struct NodeReport<'a> {
    pub url: &'a str,
    /// Connections (`fanout`: subscribers) and publishers the run put on it.
    pub connections: u64,
    pub publishers: u64,
    pub stats: &'a Stats,
}

impl NodeReport<'_> {
    pub fn to_json(&self) -> Value {
        let s = self.stats;
        json!({
            "url": self.url,
            "connections": self.connections,
            "publishers": self.publishers,
            "connections_established": s.connections_established,
            "connect_errors": s.connect_errors,
            "connections_dropped": s.connections_dropped,
            "messages_sent": s.messages_sent,
            "messages_received": s.messages_received,
            "messages_lost": s.messages_lost,
            "reconnects": s.reconnects,
        })
    }

    pub fn print(&self) {
        let s = self.stats;
        let publishers = match self.publishers {
            0 => String::new(),
            1 => " + 1 publisher".to_owned(),
            n => format!(" + {n} publishers"),
        };
        println!(
            "node            {}: {} connections{publishers}; {} established, {} dropped, {} \
             sent, {} received, {} lost, {} reconnects",
            self.url,
            self.connections,
            s.connections_established,
            s.connections_dropped,
            s.messages_sent,
            s.messages_received,
            s.messages_lost,
            s.reconnects,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(urls: &[&str], publish: &[&str]) -> Servers {
        Servers {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            publish_urls: publish.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn connections_take_the_nodes_in_turn() {
        let nodes = servers(&["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/a"], &[])
            .resolve(false)
            .expect("resolves");
        assert_eq!(nodes.len(), 2);
        let turns: Vec<usize> = (0..5).map(|n| nodes.node_of(n, false)).collect();
        assert_eq!(turns, [0, 1, 0, 1, 0]);
        assert_eq!(assigned(&nodes, 5, 0), [(3, 0), (2, 0)]);
        assert_eq!((nodes.after(0), nodes.after(1)), (1, 0));
    }

    #[test]
    fn publishers_go_to_their_own_nodes() {
        let a = "ws://127.0.0.1:1/pubsub/t";
        let b = "ws://127.0.0.1:2/pubsub/t";
        let s = servers(&[b], &[a]);
        assert_eq!(s.distinct(), [b, a]);
        let nodes = s.resolve(true).expect("resolves");
        assert_eq!(assigned(&nodes, 4, 2), [(4, 0), (0, 2)]);
        // Without --publish-url, publishers spread like everyone else.
        let nodes = servers(&[a, b], &[]).resolve(true).expect("resolves");
        assert_eq!(assigned(&nodes, 4, 3), [(2, 2), (2, 1)]);
    }

    #[test]
    fn fanout_nodes_must_name_one_topic() {
        let error = servers(
            &["ws://127.0.0.1:1/pubsub/t"],
            &["ws://127.0.0.1:2/pubsub/u"],
        )
        .resolve(true)
        .expect_err("two topics");
        assert!(error.to_string().contains("same topic"), "{error}");
        assert!(
            servers(
                &["ws://127.0.0.1:1/pubsub/t"],
                &["ws://127.0.0.1:2/pubsub/t?x=1"]
            )
            .resolve(true)
            .is_ok()
        );
    }

    #[test]
    fn buckets_fold_by_profile_and_by_node() {
        let layout = Layout {
            profiles: 2,
            nodes: 3,
        };
        let buckets: Vec<Stats> = (0..layout.buckets())
            .map(|i| Stats {
                messages_received: 1 << i,
                ..Stats::default()
            })
            .collect();
        assert_eq!(layout.bucket(1, 2), 5);
        let (profiles, nodes) = layout.fold(&buckets);
        let received = |s: &[Stats]| s.iter().map(|s| s.messages_received).collect::<Vec<_>>();
        assert_eq!(received(&profiles), [0b111, 0b111000]);
        assert_eq!(received(&nodes), [0b1001, 0b10010, 0b100100]);
    }
}
