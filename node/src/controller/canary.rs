//! Canary analysis (see [`claw_api::canary`]). Each member that carries a service's traffic
//! (its forwards and its ingress) splits it between a canary deployment's new template and the
//! rest by the step's weight, and tallies each template's requests, errors and latency since the
//! step began ([`CanaryTraffic`]). The deployment's controller reads those tallies with its
//! `deploy.replicas` calls, judges the step, and keeps its progress in a canary record it hands
//! every member with the next read (fenced like the rest of its calls): the step reached, when it
//! began, and whether the template failed. A member splits traffic by the record it keeps, so
//! the split moves on one controller round after a step does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use claw_api::canary::{
    CanaryAnalysis, CanaryRecord, CanaryStatus, RevisionTraffic, TALLIES_KEPT, Verdict,
};
use claw_api::deploy::{Deployment, DeploymentSpec, Fence, Replica, RolloutStrategy};
use claw_mesh::{ErrorCode, InvokeFailure, PeerId};

use super::plan::{canary_replicas, is_available, template_digest};
use super::{Deployments, Held, failure, written_by};
use crate::now_ms;

/// Deployments a member tallies traffic for at once.
const DEPLOYMENTS_MEASURED: usize = 256;

/// Which canary step a request belongs to: the deployment, the template of the endpoint that
/// took it, and when the step began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    deployment: String,
    template: String,
    node: String,
    since_ms: u64,
}

/// How a service's traffic is split now: `percent` of it to `deployment`'s `template`.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    deployment: String,
    template: String,
    percent: u32,
    since_ms: u64,
}

impl Split {
    /// Whether an endpoint of `deployment` running `template` is on the canary's side.
    pub(crate) fn is_canary(&self, deployment: Option<&str>, template: Option<&str>) -> bool {
        deployment == Some(self.deployment.as_str()) && template == Some(self.template.as_str())
    }

    /// The tag of a request an endpoint on `node` of `deployment` running `template` takes,
    /// when it is one of the split deployment's.
    pub(crate) fn tag(
        &self,
        deployment: Option<&str>,
        template: Option<&str>,
        node: PeerId,
    ) -> Option<Tag> {
        (deployment == Some(self.deployment.as_str())).then(|| Tag {
            deployment: self.deployment.clone(),
            template: template.unwrap_or_default().to_owned(),
            node: node.to_string(),
            since_ms: self.since_ms,
        })
    }
}

#[derive(Debug, Default)]
struct Window {
    since_ms: u64,
    /// Requests split so far in this step (the weighted turn counts from it).
    turns: u64,
    tallies: Vec<RevisionTraffic>,
}

/// This member's tallies of canary traffic, per deployment, for the current step.
#[derive(Debug, Default)]
pub(crate) struct CanaryTraffic {
    windows: Mutex<HashMap<String, Window>>,
}

impl CanaryTraffic {
    /// The window of `deployment` for a step that began at `since_ms`: a newer step starts it
    /// afresh; `None` for an older step, or when too many deployments are tallied.
    fn with_window<T>(
        &self,
        deployment: &str,
        since_ms: u64,
        f: impl FnOnce(&mut Window) -> T,
    ) -> Option<T> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(deployment) && windows.len() >= DEPLOYMENTS_MEASURED {
            return None;
        }
        let window = windows.entry(deployment.to_owned()).or_default();
        if since_ms > window.since_ms {
            *window = Window {
                since_ms,
                ..Window::default()
            };
        }
        (since_ms == window.since_ms).then(|| f(window))
    }

    /// Whether the next request of `split`'s service goes to the canary: exactly `percent` of
    /// every hundred, spread evenly.
    pub(crate) fn canary_turn(&self, split: &Split) -> bool {
        let percent = u64::from(split.percent.min(100));
        self.with_window(&split.deployment, split.since_ms, |window| {
            let n = window.turns;
            window.turns += 1;
            (n + 1) * percent / 100 > n * percent / 100
        })
        .unwrap_or(percent >= 50)
    }

    /// Counts one request: failed, or answered after `latency_ms`.
    pub(crate) fn count(&self, tag: &Tag, outcome: Result<f64, ()>) {
        self.with_window(&tag.deployment, tag.since_ms, |window| {
            let index = match window
                .tallies
                .iter()
                .position(|t| t.template == tag.template && t.node == tag.node)
            {
                Some(index) => index,
                None if window.tallies.len() < TALLIES_KEPT => {
                    window
                        .tallies
                        .push(RevisionTraffic::new(tag.template.clone(), tag.node.clone()));
                    window.tallies.len() - 1
                }
                None => return,
            };
            window.tallies[index].count(outcome);
        });
    }

    /// The tallies of `deployment` since `since_ms` (none for another step).
    fn since(&self, deployment: &str, since_ms: u64) -> Vec<RevisionTraffic> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows
            .get(deployment)
            .filter(|w| w.since_ms == since_ms)
            .map(|w| w.tallies.clone())
            .unwrap_or_default()
    }
}

/// The analysis of `spec`'s canary, when it names one.
fn analysis_of(spec: &DeploymentSpec) -> Option<(&[u32], u32, &CanaryAnalysis)> {
    match &spec.strategy {
        RolloutStrategy::Canary {
            steps,
            step,
            analysis: Some(analysis),
        } => Some((steps, *step, analysis)),
        _ => None,
    }
}

/// `record` when it is about `template`.
fn record_of(record: Option<CanaryRecord>, template: &str) -> Option<CanaryRecord> {
    record.filter(|r| r.template == template)
}

/// The traffic share of a canary at `step` of `steps`, given its record.
fn percent_at(steps: &[u32], step: u32, failed: bool) -> u32 {
    if failed {
        0
    } else {
        steps.get(step as usize).copied().unwrap_or(100)
    }
}

/// Sums the tallies of `reports` (records and traffic per member) that belong to `record`'s
/// step into the canary's and the stable side's; malformed ones are left out.
fn summed(record: &CanaryRecord, reports: &CanaryReports) -> (RevisionTraffic, RevisionTraffic) {
    let mut canary = RevisionTraffic::new(record.template.clone(), String::new());
    let mut stable = RevisionTraffic::new(String::new(), String::new());
    for (kept, traffic) in reports {
        let same_step = kept
            .as_ref()
            .is_some_and(|k| k.template == record.template && k.since_ms == record.since_ms);
        if !same_step {
            continue;
        }
        for tally in traffic {
            let side = if tally.template == record.template {
                &mut canary
            } else {
                &mut stable
            };
            if let Err(error) = side.add(tally) {
                tracing::debug!(%error, "a member's canary tally left out");
            }
        }
    }
    (canary, stable)
}

impl Deployments {
    /// This member's canary traffic tallies.
    pub(crate) fn canary_traffic(&self) -> &CanaryTraffic {
        &self.inner.canary_traffic
    }

    /// The tallies of `peer`'s report that count: those of requests to its own endpoints of a
    /// template it reports running (`replicas`; it runs those containers, and could make them
    /// fail or not anyway), and, from a member this node lets reach services (an operator or
    /// admin, or this node itself), those to other nodes' endpoints, which admit it by the same
    /// rule. A plain member's tallies about other nodes' endpoints are left out: it could not
    /// have carried that traffic, so its numbers cannot promote or fail a canary.
    pub(super) fn counted_traffic(
        &self,
        peer: PeerId,
        traffic: Vec<RevisionTraffic>,
        replicas: &[Replica],
    ) -> Vec<RevisionTraffic> {
        let reaches_others = self.inner.access.role_of(&peer) >= claw_api::Role::Operate;
        let own = peer.to_string();
        let runs = |template: &str| {
            replicas
                .iter()
                .any(|r| r.template == template && r.state.is_active())
        };
        let (counted, left): (Vec<_>, Vec<_>) = traffic
            .into_iter()
            .partition(|t| reaches_others || (t.node == own && runs(&t.template)));
        if !left.is_empty() {
            tracing::debug!(%peer, left = left.len(), "canary tallies about other nodes' endpoints left out");
        }
        counted
    }

    /// How service `service`'s traffic is split now, among the deployments its endpoints
    /// belong to: by the first of them (by name) whose canary names the service.
    pub(crate) async fn split<'a>(
        &self,
        service: &str,
        deployments: impl IntoIterator<Item = &'a str>,
    ) -> Option<Split> {
        let names: std::collections::BTreeSet<&str> = deployments.into_iter().collect();
        for name in names {
            let Ok(deployment) = self.inner.objects.deployment(name).await else {
                continue;
            };
            let Some((steps, step, analysis)) = analysis_of(&deployment.spec) else {
                continue;
            };
            if analysis.service != service {
                continue;
            }
            let template = template_digest(&deployment.spec);
            let key = name.to_owned();
            let kept = self
                .inner
                .store
                .run(move |s| s.canary(&key))
                .await
                .ok()
                .flatten();
            let kept = record_of(kept, &template);
            let (step, failed, since_ms) = match &kept {
                Some(record) => (record.step.max(step), record.failed, record.since_ms),
                None => (step, false, 0),
            };
            return Some(Split {
                deployment: name.to_owned(),
                template,
                percent: percent_at(steps, step, failed),
                since_ms,
            });
        }
        None
    }

    /// Keeps a canary record a controller hands this node, when the controller wrote it under
    /// the claim it holds and it is within bounds.
    pub(super) async fn keep_canary(
        &self,
        caller: PeerId,
        name: &str,
        epoch: u64,
        record: CanaryRecord,
    ) -> Result<(), InvokeFailure> {
        if !written_by(record.fence.as_ref(), caller, epoch) {
            return Ok(());
        }
        record
            .check()
            .map_err(|e| failure(ErrorCode::InvalidParams, e))?;
        let key = name.to_owned();
        self.inner
            .store
            .run(move |s| s.put_canary(&key, &record))
            .await?;
        Ok(())
    }

    /// The canary record this node keeps for `name` and its traffic in that record's step.
    pub(super) async fn canary_report(
        &self,
        name: &str,
    ) -> Result<(Option<CanaryRecord>, Vec<RevisionTraffic>), InvokeFailure> {
        let key = name.to_owned();
        let kept = self.inner.store.run(move |s| s.canary(&key)).await?;
        let traffic = kept
            .as_ref()
            .map(|r| self.inner.canary_traffic.since(name, r.since_ms))
            .unwrap_or_default();
        Ok((kept, traffic))
    }

    /// One controller round's analysis of `deployment`'s canary, from the members' `reports`:
    /// judges the step its record is at, moves the record on (a step passed) or marks the
    /// template failed (and its revision, which rolls it back), and keeps the record here.
    /// Returns the deployment at the step reached.
    pub(super) async fn analyse(
        &self,
        deployment: &Deployment,
        held: &mut Held,
        claim: &Fence,
        reports: CanaryReports,
        replicas: &BTreeMap<PeerId, Vec<Replica>>,
    ) -> Result<Deployment, InvokeFailure> {
        let Some((steps, spec_step, analysis)) = analysis_of(&deployment.spec) else {
            held.canary = None;
            return Ok(deployment.clone());
        };
        for kept in reports.iter().filter_map(|(kept, _)| kept.as_ref()) {
            if held.canary.as_ref().is_none_or(|h| kept.is_newer_than(h)) {
                held.canary = Some(kept.clone());
            }
        }
        let template = template_digest(&deployment.spec);
        let now = now_ms();
        let (mut record, mut changed) = match record_of(held.canary.clone(), &template) {
            Some(record) => {
                let ours = record.fence.as_ref() == Some(claim);
                (record, !ours)
            }
            None => (
                CanaryRecord {
                    fence: Some(claim.clone()),
                    // Versions go on rising across templates, so that members replace the
                    // record of the template before.
                    version: held.canary.as_ref().map_or(0, |r| r.version),
                    template: template.clone(),
                    step: spec_step,
                    since_ms: now,
                    failed: false,
                    note: None,
                },
                true,
            ),
        };
        if spec_step > record.step {
            // Promoted by hand past where the analysis was.
            record.step = spec_step;
            record.since_ms = now;
            changed = true;
        }
        let rolling_out = replicas
            .values()
            .flatten()
            .any(|r| r.state.is_active() && r.template != template);
        if let Some(percent) = steps.get(record.step as usize).copied()
            && !record.failed
            && rolling_out
        {
            let (canary, stable) = summed(&record, &reports);
            let wanted = canary_replicas(deployment.spec.replicas as usize, percent);
            let serving = replicas
                .values()
                .flatten()
                .filter(|r| r.template == template && is_available(r))
                .count()
                >= wanted;
            let watched_ms = now.saturating_sub(record.since_ms);
            match analysis.judge(&canary.summary(), &stable.summary(), watched_ms, serving) {
                Verdict::Wait(_) => {}
                Verdict::Pass(measured) => {
                    let step = record.step;
                    record.step += 1;
                    record.since_ms = now;
                    let next = percent_at(steps, record.step, false);
                    record.set_note(format!(
                        "step {} ({percent} % of traffic) passed, now at {next} %: {measured}",
                        step + 1
                    ));
                    tracing::info!(deployment = %deployment.name, step = record.step, "canary step passed");
                    changed = true;
                }
                Verdict::Fail(why) => {
                    record.failed = true;
                    record.set_note(format!(
                        "revision {} failed its canary analysis at step {} ({percent} % of \
                         traffic): {why}",
                        deployment.revision,
                        record.step + 1
                    ));
                    tracing::warn!(deployment = %deployment.name, revision = deployment.revision, %why, "canary fails its analysis: rolling back");
                    held.failed.insert(deployment.revision);
                    changed = true;
                }
            }
        }
        if changed {
            record.fence = Some(claim.clone());
            record.version += 1;
            let (key, kept) = (deployment.name.clone(), record.clone());
            self.inner
                .store
                .run(move |s| s.put_canary(&key, &kept))
                .await?;
        }
        let mut at_step = deployment.clone();
        if let RolloutStrategy::Canary { step, .. } = &mut at_step.spec.strategy {
            *step = record.step;
        }
        held.canary = Some(record);
        Ok(at_step)
    }

    /// `deploy.status`'s canary part, from the members' `reports`.
    pub(super) fn canary_status(
        deployment: &Deployment,
        reports: &CanaryReports,
    ) -> Option<CanaryStatus> {
        let (steps, spec_step, analysis) = analysis_of(&deployment.spec)?;
        let template = template_digest(&deployment.spec);
        let record = reports
            .iter()
            .filter_map(|(kept, _)| record_of(kept.clone(), &template))
            .reduce(|a, b| if b.is_newer_than(&a) { b } else { a })?;
        let (canary, stable) = summed(&record, reports);
        let step = record.step.max(spec_step);
        Some(CanaryStatus {
            service: analysis.service.clone(),
            step,
            traffic_percent: percent_at(steps, step, record.failed),
            since_ms: record.since_ms,
            canary: canary.summary(),
            stable: stable.summary(),
            failed: record.failed,
            note: record.note,
        })
    }
}

/// Every member's canary record and traffic, from its report's fields.
pub(super) type CanaryReports = Vec<(Option<CanaryRecord>, Vec<RevisionTraffic>)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn split(percent: u32) -> Split {
        Split {
            deployment: "web".into(),
            template: "new".into(),
            percent,
            since_ms: 10,
        }
    }

    #[test]
    fn a_split_sends_exactly_its_share_and_a_new_step_starts_afresh() {
        let traffic = CanaryTraffic::default();
        let turns = |s: &Split, n: usize| (0..n).filter(|_| traffic.canary_turn(s)).count();
        assert_eq!(turns(&split(10), 100), 10);
        assert_eq!(
            turns(&split(10), 5),
            0,
            "evenly spread: the next one is the 110th"
        );
        let mut next = split(50);
        next.since_ms = 20;
        assert_eq!(turns(&next, 100), 50);
        assert_eq!(turns(&split(0), 10), 0);
        assert_eq!(
            turns(&split(0), 10),
            0,
            "an older step's split is not counted: it goes its share's way"
        );
        let mut promoted = split(100);
        promoted.since_ms = 30;
        assert_eq!(turns(&promoted, 10), 10);
    }

    #[test]
    fn tallies_are_kept_per_step_and_template_and_bounded() {
        let traffic = CanaryTraffic::default();
        let s = split(10);
        let node = PeerId::random();
        let new = s.tag(Some("web"), Some("new"), node).unwrap();
        let old = s.tag(Some("web"), Some("old"), node).unwrap();
        assert!(s.tag(Some("other"), Some("new"), node).is_none());
        traffic.count(&new, Ok(3.0));
        traffic.count(&new, Err(()));
        traffic.count(&old, Ok(2.0));
        let kept = traffic.since("web", 10);
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].requests, kept[0].errors), (2, 1));
        assert!(traffic.since("web", 11).is_empty());
        for i in 0..TALLIES_KEPT + 4 {
            let tag = s.tag(Some("web"), Some(&format!("t{i}")), node).unwrap();
            traffic.count(&tag, Ok(1.0));
        }
        assert_eq!(traffic.since("web", 10).len(), TALLIES_KEPT);
        // A later step replaces the window; a request of the step before is not counted.
        let later = Tag {
            since_ms: 40,
            ..new.clone()
        };
        traffic.count(&later, Ok(1.0));
        traffic.count(&new, Ok(1.0));
        assert_eq!(traffic.since("web", 40).len(), 1);
        assert!(traffic.since("web", 10).is_empty());
    }
}
