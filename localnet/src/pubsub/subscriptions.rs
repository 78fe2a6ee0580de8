//! One connection's subscriptions, and the notifications a chain event makes of them: the pure
//! core of PubSub, with no socket and no lock.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use solana_pubkey::Pubkey;
use solana_signature::Signature;
use solana_transaction_error::TransactionError;

use super::method::{Kind, LogsFilter, Subscribe};
use crate::account::{AccountEncoding, DataSlice, ui_account};
use crate::events::{AccountDigest, ChainEvent, LandedTransaction, SlotInfo};

/// A live subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    Signature {
        signature: Signature,
        received: bool,
    },
    Account {
        address: Pubkey,
        encoding: AccountEncoding,
        slice: Option<DataSlice>,
        /// The state last notified (or seen when subscribing).
        last: AccountDigest,
        /// The sequence number of the transaction that state is from.
        seen: u64,
    },
    Slot,
    Logs(LogsFilter),
}

impl Subscription {
    /// The subscription `request` asks for. Accounts need their state now and the chain's
    /// transaction sequence number (from [`crate::chain::Chain::watch`]).
    pub(crate) fn new(request: Subscribe, account_now: Option<(AccountDigest, u64)>) -> Self {
        match request {
            Subscribe::Signature {
                signature,
                received,
            } => Self::Signature {
                signature,
                received,
            },
            Subscribe::Account {
                address,
                encoding,
                slice,
            } => {
                let (last, seen) =
                    account_now.unwrap_or((AccountDigest::of(&Default::default()), 0));
                Self::Account {
                    address,
                    encoding,
                    slice,
                    last,
                    seen,
                }
            }
            Subscribe::Slot => Self::Slot,
            Subscribe::Logs(filter) => Self::Logs(filter),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::Signature { .. } => Kind::Signature,
            Self::Account { .. } => Kind::Account,
            Self::Slot => Kind::Slot,
            Self::Logs(_) => Kind::Logs,
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection already has {limit} subscriptions")]
pub(crate) struct TooManySubscriptions {
    pub(crate) limit: usize,
}

/// A connection's subscriptions by id.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    entries: BTreeMap<u64, Subscription>,
    limit: usize,
}

impl Subscriptions {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            limit,
        }
    }

    /// Refuses when the connection has `limit` subscriptions already.
    pub(crate) fn check_room(&self) -> Result<(), TooManySubscriptions> {
        if self.entries.len() >= self.limit {
            return Err(TooManySubscriptions { limit: self.limit });
        }
        Ok(())
    }

    pub(crate) fn insert(&mut self, id: u64, subscription: Subscription) {
        self.entries.insert(id, subscription);
    }

    /// Removes subscription `id` if it is of `kind`.
    pub(crate) fn remove(&mut self, kind: Kind, id: u64) -> Option<Subscription> {
        if self.entries.get(&id)?.kind() != kind {
            return None;
        }
        self.entries.remove(&id)
    }

    /// The addresses of the account subscriptions, once per subscription.
    pub(crate) fn watched_addresses(&self) -> impl Iterator<Item = &Pubkey> {
        self.entries.values().filter_map(|s| match s {
            Subscription::Account { address, .. } => Some(address),
            _ => None,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The notifications `event` makes; signature subscriptions that fire are removed.
    pub(crate) fn notifications(&mut self, event: &ChainEvent) -> Vec<Value> {
        match event {
            ChainEvent::Slot(info) => self.slot_notifications(*info),
            ChainEvent::Transaction(landed) => self.transaction_notifications(landed),
        }
    }

    fn slot_notifications(&self, info: SlotInfo) -> Vec<Value> {
        self.entries
            .iter()
            .filter(|(_, s)| matches!(s, Subscription::Slot))
            .map(|(id, _)| slot_notification(*id, info))
            .collect()
    }

    fn transaction_notifications(&mut self, landed: &LandedTransaction) -> Vec<Value> {
        let mut out = Vec::new();
        let mut fired = Vec::new();
        for (id, subscription) in &mut self.entries {
            match subscription {
                Subscription::Signature {
                    signature,
                    received,
                } if *signature == landed.signature => {
                    out.extend(signature_notifications(
                        *id,
                        landed.slot,
                        landed.err.as_ref(),
                        *received,
                    ));
                    fired.push(*id);
                }
                Subscription::Logs(filter) if filter.admits(landed) => {
                    out.push(logs_notification(*id, landed));
                }
                Subscription::Account { .. } => {
                    out.extend(account_notification(*id, subscription, landed));
                }
                _ => {}
            }
        }
        for id in fired {
            self.entries.remove(&id);
        }
        out
    }
}

impl LogsFilter {
    fn admits(&self, landed: &LandedTransaction) -> bool {
        match self {
            Self::All => true,
            Self::Mentions(address) => landed.mentions.contains(address),
        }
    }
}

/// A notification of subscription `id`.
fn notification(method: &str, id: u64, result: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": {"result": result, "subscription": id},
    })
}

fn slot_notification(id: u64, info: SlotInfo) -> Value {
    notification(
        "slotNotification",
        id,
        json!({"parent": info.parent, "root": info.root, "slot": info.slot}),
    )
}

/// What a signature subscription says when its transaction landed in `slot`: first
/// `receivedSignature` if it asked for that, then the outcome.
pub(crate) fn signature_notifications(
    id: u64,
    slot: u64,
    err: Option<&TransactionError>,
    received: bool,
) -> Vec<Value> {
    let result = |value: Value| json!({"context": {"slot": slot}, "value": value});
    let mut out = Vec::with_capacity(2);
    if received {
        out.push(notification(
            "signatureNotification",
            id,
            result(json!("receivedSignature")),
        ));
    }
    out.push(notification(
        "signatureNotification",
        id,
        result(json!({"err": err_json(err)})),
    ));
    out
}

fn logs_notification(id: u64, landed: &LandedTransaction) -> Value {
    notification(
        "logsNotification",
        id,
        json!({
            "context": {"slot": landed.slot},
            "value": {
                "signature": landed.signature.to_string(),
                "err": err_json(landed.err.as_ref()),
                "logs": landed.logs,
            },
        }),
    )
}

/// The notification of an account subscription, when `landed` changed the account after the
/// state it last notified; that state is updated.
fn account_notification(
    id: u64,
    subscription: &mut Subscription,
    landed: &LandedTransaction,
) -> Option<Value> {
    let Subscription::Account {
        address,
        encoding,
        slice,
        last,
        seen,
    } = subscription
    else {
        return None;
    };
    let watched = landed.accounts.iter().find(|a| a.address == *address)?;
    // An event older than the state already seen (queued before the subscription) says nothing.
    if landed.sequence <= *seen {
        return None;
    }
    *seen = landed.sequence;
    if watched.digest == *last {
        return None;
    }
    *last = watched.digest;
    Some(notification(
        "accountNotification",
        id,
        json!({
            "context": {"slot": landed.slot},
            "value": ui_account(&watched.account, *encoding, *slice),
        }),
    ))
}

fn err_json(err: Option<&TransactionError>) -> Value {
    err.and_then(|e| serde_json::to_value(e).ok())
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use solana_account::Account;

    use super::*;
    use crate::events::WatchedAccount;

    fn landed(sequence: u64, mentions: Vec<Pubkey>, accounts: Vec<WatchedAccount>) -> ChainEvent {
        ChainEvent::Transaction(Arc::new(LandedTransaction {
            sequence,
            signature: Signature::from([sequence as u8; 64]),
            slot: 10 + sequence,
            err: None,
            logs: vec!["Program log: hi".to_owned()],
            mentions,
            accounts,
        }))
    }

    fn watched(address: Pubkey, lamports: u64) -> WatchedAccount {
        let account = Account {
            lamports,
            ..Account::default()
        };
        WatchedAccount {
            address,
            digest: AccountDigest::of(&account),
            account,
        }
    }

    #[test]
    fn a_signature_notifies_once_and_is_removed() {
        let mut subs = Subscriptions::new(8);
        let signature = Signature::from([1; 64]);
        subs.insert(
            5,
            Subscription::new(
                Subscribe::Signature {
                    signature,
                    received: true,
                },
                None,
            ),
        );
        let out = subs.notifications(&landed(1, vec![], vec![]));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["params"]["result"]["value"], "receivedSignature");
        assert_eq!(
            out[1],
            json!({"jsonrpc": "2.0", "method": "signatureNotification", "params": {
                "result": {"context": {"slot": 11}, "value": {"err": null}}, "subscription": 5}})
        );
        assert_eq!(subs.len(), 0);
        assert!(subs.notifications(&landed(1, vec![], vec![])).is_empty());
    }

    #[test]
    fn accounts_notify_changes_only_and_never_older_states() {
        let address = Pubkey::new_from_array([4; 32]);
        let mut subs = Subscriptions::new(8);
        let now = watched(address, 100);
        subs.insert(
            1,
            Subscription::new(
                Subscribe::Account {
                    address,
                    encoding: AccountEncoding::Base64,
                    slice: None,
                },
                Some((now.digest, 3)),
            ),
        );
        // Queued before the subscription: ignored even though it differs.
        assert!(
            subs.notifications(&landed(3, vec![address], vec![watched(address, 50)]))
                .is_empty()
        );
        // Named but unchanged.
        assert!(
            subs.notifications(&landed(4, vec![address], vec![watched(address, 100)]))
                .is_empty()
        );
        let out = subs.notifications(&landed(5, vec![address], vec![watched(address, 150)]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["method"], "accountNotification");
        assert_eq!(out[0]["params"]["result"]["value"]["lamports"], 150);
        assert_eq!(out[0]["params"]["result"]["context"]["slot"], 15);
    }

    #[test]
    fn logs_filter_by_mention_and_slots_tick() {
        let address = Pubkey::new_from_array([4; 32]);
        let mut subs = Subscriptions::new(8);
        subs.insert(1, Subscription::Logs(LogsFilter::Mentions(address)));
        subs.insert(2, Subscription::Logs(LogsFilter::All));
        subs.insert(3, Subscription::Slot);
        let other = subs.notifications(&landed(1, vec![], vec![]));
        assert_eq!(other.len(), 1);
        assert_eq!(other[0]["params"]["subscription"], 2);
        let mentioned = subs.notifications(&landed(2, vec![address], vec![]));
        assert_eq!(mentioned.len(), 2);
        assert_eq!(
            mentioned[0]["params"]["result"]["value"]["logs"],
            json!(["Program log: hi"])
        );
        let slot = subs.notifications(&ChainEvent::Slot(SlotInfo {
            slot: 9,
            parent: 8,
            root: 9,
        }));
        assert_eq!(
            slot,
            vec![json!({"jsonrpc": "2.0", "method": "slotNotification",
                "params": {"result": {"parent": 8, "root": 9, "slot": 9}, "subscription": 3}})]
        );
    }

    #[test]
    fn unsubscribing_needs_the_right_kind_and_room_is_bounded() {
        let mut subs = Subscriptions::new(1);
        subs.insert(1, Subscription::Slot);
        assert_eq!(subs.check_room(), Err(TooManySubscriptions { limit: 1 }));
        assert!(subs.remove(Kind::Logs, 1).is_none());
        assert!(subs.remove(Kind::Slot, 1).is_some());
        assert!(subs.remove(Kind::Slot, 1).is_none());
        assert!(subs.check_room().is_ok());
    }
}
