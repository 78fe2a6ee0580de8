//! Peers this node has met, remembered in a small JSON file so that a restarted node rejoins
//! without its bootstrap list.

use std::collections::BTreeMap;
use std::path::PathBuf;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::swarm::usable_address;

/// Most peers remembered.
const MAX_PEERS: usize = 256;
/// Most addresses remembered per peer.
const MAX_ADDRS: usize = 4;
/// Largest file read back.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct KnownPeers {
    path: Option<PathBuf>,
    peers: BTreeMap<String, Vec<String>>,
    dirty: bool,
}

impl KnownPeers {
    /// Reads the file if there is one; an unreadable file is logged and ignored.
    pub(crate) fn load(path: Option<PathBuf>) -> Self {
        let peers = path
            .as_ref()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() <= MAX_FILE_BYTES))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(peers) => Some(peers),
                Err(error) => {
                    tracing::warn!(%error, "ignoring unreadable known-peers file");
                    None
                }
            })
            .unwrap_or_default();
        Self {
            path,
            peers,
            dirty: false,
        }
    }

    /// Dialable addresses (with `/p2p/<peer>`) of every remembered peer.
    pub(crate) fn addresses(&self) -> Vec<Multiaddr> {
        self.peers
            .iter()
            .filter_map(|(peer, addrs)| Some((peer.parse::<PeerId>().ok()?, addrs)))
            .flat_map(|(peer, addrs)| {
                addrs.iter().filter_map(move |a| {
                    let address: Multiaddr = a.parse().ok()?;
                    Some(address.with_p2p(peer).unwrap_or_else(|a| a))
                })
            })
            .collect()
    }

    pub(crate) fn remember(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if self.path.is_none() {
            return;
        }
        let addrs: Vec<String> = addrs
            .iter()
            .filter(|a| usable_address(a) && !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
            .take(MAX_ADDRS)
            .map(ToString::to_string)
            .collect();
        let key = peer.to_string();
        if self.peers.get(&key) == Some(&addrs) {
            return;
        }
        if !self.peers.contains_key(&key) && self.peers.len() >= MAX_PEERS {
            return;
        }
        self.peers.insert(key, addrs);
        self.dirty = true;
    }

    pub(crate) fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&self.peers)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => self.dirty = false,
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot save known peers"),
        }
    }
}
