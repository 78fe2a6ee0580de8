// The bridge's answers, as far as the plugin reads them: the fields contract/bridge-fields.json
// lists, which the bridge's end-to-end test checks in real answers. contract/commands.json holds
// the JSON schema of each answer; the parts read here are written out from it, and a field the
// plugin does not read is left out. Optional marks follow what the bridge may omit (for the
// fleet.* answers: what their schemas do not require).

export interface NodeError {
  code: string;
  message: string;
}

export interface FleetStatus {
  node_count: number;
  running_workloads: number;
  gpus: { total: number; free: number; allocated: number; simulated: number };
  nodes: {
    node: string;
    peer_id: string;
    gpus: number;
    free_gpus: number;
    running_workloads: number;
    cordoned: boolean;
    simulated: boolean;
    reachability: string;
  }[];
  alerts: string[];
}

export interface FleetGpus {
  gpus: { node: string; uuid: string; model: string; memory_mib: number; simulated: boolean; allocated: boolean }[];
}

export interface FleetDeploy {
  node: string;
  peer_id: string;
  why: { score: number; free_gpus: number; health: string };
  considered: unknown[];
  workload: { id: string; state: string };
}

export interface FleetWorkloads {
  workloads: { id: string; node: string; image: string; state: string }[];
  unreachable: { node: string; error: string }[];
}

/** One node's part of a `fleet.invoke` answer: `result` when `ok`, else `error`. */
export interface InvokeResult<R = unknown> {
  node: string;
  ok: boolean;
  ms: number;
  result?: R;
  error?: NodeError;
}

export interface FleetInvoke<R = unknown> {
  command: string;
  nodes: number;
  succeeded: number;
  failed: number;
  results: InvokeResult<R>[];
}

/** A daily selling window (`market.sell`'s `window`): `from` to `until`, `HH:MM` in `time_zone`. */
export interface SellWindow {
  from: string;
  until: string;
  time_zone?: string;
}

/** `market.sell`'s answer on one node (through `fleet.invoke`). */
export interface MarketSell {
  offers?: { gpus: number; withdrawn?: boolean }[];
  window?: SellWindow | null;
}

export interface HealthReason {
  component: string;
  status: string;
  detail: string;
}

/** One node's part of a `fleet.health` answer: its `node.health` report when `ok`, else `error`. */
export interface NodeHealth {
  node: string;
  ok: boolean;
  result?: { status: string; reasons: HealthReason[] };
  error?: NodeError;
}

export interface FleetHealth {
  summary: Record<string, number>;
  nodes: NodeHealth[];
}

export interface FleetDrain {
  node: string;
  drain: { cordoned: boolean; workloads: { workload: string; outcome: string }[] };
}

/** `market.history`: settled leases checked on chain, and their prices per day. */
export interface MarketHistory {
  days: {
    day: string;
    gpu_model: string;
    region: string | null;
    simulated: boolean;
    trades: number;
    gpu_hours: number;
    min: string;
    p50: string;
    p90: string;
    max: string;
  }[];
  trades: { lease_id: string; price_per_gpu_hour: string; payment: string; settled_ms: number; settlement: string }[];
  matching: number;
}

export interface MarketOffers {
  offers?: {
    node?: string;
    provider?: string;
    gpus: number;
    gpu_model: string;
    price_per_gpu_hour: string;
    min_hours: number;
    max_hours: number;
    simulated?: boolean;
    reputation: number;
  }[];
}

export interface Offer {
  gpus: number;
  gpu_model: string;
  price_per_gpu_hour: string;
  provider?: string;
  total?: string;
}

/** `market.bid`'s answer: nothing matched; a match, not leased (no workload); or a lease. */
export type MarketBid =
  | { matched: false; explanation: string; nearest?: (Offer & { fails: string[] })[] }
  | { matched: true; leased?: false; offer: Offer & { provider: string; total: string } }
  | {
      matched: true;
      leased: true;
      lease: { lease_id: string; state: string; amount: string; hours: number; gpus: unknown[]; workload_id?: string };
      phases_ms?: { total?: number };
    };

export interface Lease {
  lease_id: string;
  side?: string;
  state: string;
  amount?: string;
  reason?: string | null;
}

export interface MarketLeases {
  leases?: Lease[];
}

export interface LeaseCancel {
  lease_id: string;
  state: string;
  reason?: string | null;
  to_provider?: string | null;
  to_buyer?: string | null;
  served_secs?: number;
}

export interface WalletBalance {
  address: string;
  molt: string;
  sol: string;
}

/** A deployment's revision, as deploy.create, update, rollback and promote answer it. */
export interface DeploymentRevision {
  name: string;
  revision: number;
  spec: { replicas: number; template: { image: string }; strategy: { type: string; step?: number; steps?: number[] } };
}

export interface DeploymentStatus extends DeploymentRevision {
  controller: string | null;
  ready: number;
  pending: string | null;
  failed_revisions: number[];
  replicas: { node_name: string; revision: number; state: string; health?: string | null }[];
  /** The count an autoscaler decided, kept instead of `spec.replicas`; absent when none. */
  autoscaled?: number | null;
  /** The canary's analysis, when its canary names a service. */
  canary?: CanaryStatus | null;
}

/** A revision's traffic through a service in a canary step, summed over the members. */
export interface TrafficSummary {
  requests: number;
  errors: number;
  error_percent: number;
  p99_ms?: number | null;
}

export interface CanaryStatus {
  service: string;
  step: number;
  traffic_percent: number;
  since_ms: number;
  canary: TrafficSummary;
  stable: TrafficSummary;
  failed: boolean;
  note?: string | null;
}

export interface DeploymentList {
  deployments: DeploymentRevision[];
}

export interface DeploymentDeleted {
  name: string;
  revision: number;
}

// Jobs and cron jobs (node/api/src/jobs.rs and cron.rs). These are written out whole from their
// schemas: optional marks follow each schema's `required`, and `| null` its nullable fields.

/** What a job's pods run: `workload.run`'s params (without `name`, `gpu_uuids`; `restart` "no"). */
export interface RunParams {
  image: string;
  command?: string[];
  name?: string | null;
  env?: Record<string, string>;
  ports?: { container: number; host?: number | null; protocol?: "tcp" | "udp" }[];
  volumes?: { host: string; container: string; read_only?: boolean }[];
  gpus?: number | null;
  gpu_uuids?: string[] | null;
  cpus?: number | null;
  memory_mib?: number | null;
  restart?: "no" | "on-failure" | "always" | "unless-stopped";
  labels?: Record<string, string>;
  isolation?: "shared" | "tenant";
  writable_root?: boolean;
}

/** What a job runs and how often it may try. */
export interface JobSpec {
  template: RunParams;
  gpu_model?: string | null;
  completions?: number;
  parallelism?: number;
  backoff_limit?: number;
  active_deadline_secs?: number | null;
}

/** A job as every member keeps it: job.create's answer. */
export interface Job {
  name: string;
  revision: number;
  spec: JobSpec;
  signed_by: string;
  signed_at_ms: number;
}

export type AttemptState = "running" | "succeeded" | "failed" | "lost";

export type RunPhase = "running" | "complete" | "failed";

/** Why a run was started. */
export type RunCause = { type: "created" } | { type: "scheduled"; slot_ms: number } | { type: "triggered"; trigger: number };

/** One pod of a run: one try at one completion. */
export interface Attempt {
  workload: string;
  node: string;
  state: AttemptState;
  exit_code?: number | null;
  started_ms: number;
  finished_ms?: number | null;
}

/** One run of a job (or of a cron job's job or bid): its pods until enough complete. */
export interface Run {
  id: string;
  revision: number;
  cause: RunCause;
  started_ms: number;
  phase: RunPhase;
  reason?: string | null;
  finished_ms?: number | null;
  attempts: Attempt[];
  /** A bid's run (a cron job that bids): the lease its bid took, when it leased. */
  lease_id?: string | null;
}

/** job.status: the job, flattened, with its controller and run. */
export interface JobStatus extends Job {
  controller?: string | null;
  run?: Run | null;
  succeeded: number;
  failed: number;
  active: number;
  pending?: string | null;
}

export interface JobSummary {
  name: string;
  revision: number;
  phase?: RunPhase | null;
  succeeded: number;
  completions: number;
}

export interface JobListing {
  jobs: JobSummary[];
}

/** One line of a container's output: a peer's data. */
export interface LogLine {
  stream: string;
  line: string;
}

/** One attempt (flattened) with its output, or why there is none. */
export interface AttemptLogs extends Attempt {
  lines: LogLine[];
  unavailable?: string | null;
}

export interface JobLogs {
  name: string;
  /** The run whose attempts these are. */
  run?: string | null;
  attempts: AttemptLogs[];
}

export interface JobDeleted {
  name: string;
  revision: number;
}

export type ConcurrencyPolicy = "allow" | "forbid" | "replace";

/** What a lease runs: `market.bid`'s `workload` (node/api/src/market.rs). */
export interface LeaseWorkload {
  image: string;
  command?: string[];
  env?: Record<string, string>;
  cpus?: number | null;
  memory_mib?: number | null;
  writable_root?: boolean;
}

/** `market.bid`'s params: what the buyer wants, what it pays at most, and what to run. */
export interface BidParams {
  models: string[];
  gpus: number;
  hours: number;
  max_price: string;
  min_vram_mib?: number;
  region?: string | null;
  attested_only?: boolean;
  min_reputation?: number;
  accept_simulated?: boolean;
  workload?: LeaseWorkload | null;
  payment?: "escrow" | "stream";
}

/**
 * The bid a cron job places at each scheduled time: `market.bid` on member `node` (a peer id),
 * with its own wallet, never over `budget` (MOLT; `max_price` × `gpus` × `hours` must be within it).
 */
export interface CronBid {
  node: string;
  bid: BidParams;
  budget: string;
}

/** A cron job: when, and what: exactly one of `job` and `bid`. */
export interface CronSpec {
  schedule: string;
  time_zone?: string;
  concurrency_policy?: ConcurrencyPolicy;
  starting_deadline_secs?: number | null;
  suspend?: boolean;
  job?: JobSpec | null;
  bid?: CronBid | null;
  triggers?: number;
}

/** A cron job as every member keeps it: cron.create, trigger, suspend and resume answer it. */
export interface CronJob {
  name: string;
  revision: number;
  spec: CronSpec;
  signed_by: string;
  signed_at_ms: number;
}

export interface CronSummary {
  name: string;
  revision: number;
  schedule: string;
  time_zone: string;
  suspended: boolean;
  last_slot_ms?: number | null;
  next_ms?: number | null;
  active_runs: number;
}

export interface CronListing {
  cron_jobs: CronSummary[];
}

/** cron.status: the cron job, flattened, with its controller, recent runs and skipped times. */
export interface CronStatus extends CronJob {
  controller?: string | null;
  last_slot_ms?: number | null;
  next_ms?: number | null;
  runs: Run[];
  skipped: string[];
  pending?: string | null;
}

export interface CronDeleted {
  name: string;
  revision: number;
}

// Autoscalers (node/api/src/autoscale.rs), written out whole from their schemas like jobs.

/** What an autoscaler measures on each replica. */
export type AutoscaleMetric =
  | { type: "gpu_utilization" }
  | { type: "cpu" }
  | { type: "file"; path: string }
  | { type: "http"; port: number; path?: string };

/** Which deployment, between which counts, on which metric. */
export interface AutoscaleSpec {
  deployment: string;
  min: number;
  max: number;
  metric: AutoscaleMetric;
  target: number;
  cooldown_secs?: number;
}

/** An autoscaler as every member keeps it: autoscale.create and adjust answer it. */
export interface Autoscaler {
  name: string;
  revision: number;
  spec: AutoscaleSpec;
  signed_by: string;
  signed_at_ms: number;
}

/** One decision of an autoscaler. */
export interface ScaleDecision {
  at_ms: number;
  from: number;
  to: number;
  value?: number | null;
  reason: string;
}

/** The count an autoscaler keeps a deployment at, with its newest decisions (oldest first). */
export interface ScaleRecord {
  fence?: { epoch: number; controller: string } | null;
  version: number;
  replicas: number;
  changed_ms: number;
  value?: number | null;
  decisions: ScaleDecision[];
}

/** autoscale.status: the autoscaler, flattened, with the deployment's controller and its record. */
export interface AutoscaleStatus extends Autoscaler {
  controller?: string | null;
  scale?: ScaleRecord | null;
}

export interface AutoscalerDeleted {
  name: string;
  revision: number;
}

/** A config at its latest revision: config.create, update and get answer it. */
export interface Config {
  name: string;
  revision: number;
  data: Record<string, string>;
  signed_by: string;
  signed_at_ms: number;
}

/** config.list: each config's keys, not its values. */
export interface ConfigListing {
  configs: { name: string; revision: number; keys: string[]; signed_at_ms: number }[];
}

/** A secret as answers show it: its keys and the nodes it is sealed to, never its values. */
export interface Secret {
  name: string;
  revision: number;
  keys: string[];
  nodes: string[];
  signed_by: string;
  signed_at_ms: number;
  rolled?: string[];
}

export interface SecretListing {
  secrets: Secret[];
}

/** A service as service.create and service.list show it. */
export interface Service {
  name: string;
  revision: number;
  spec: { selector: Record<string, string>; port: number };
}

export interface ServiceListing {
  services: Service[];
}

/** An ingress rule. */
export interface IngressRule {
  name: string;
  revision: number;
  spec: { node: string; host: string; path: string; service: string };
}

export interface IngressListing {
  ingresses: IngressRule[];
}

/** A policy. */
export interface Policy {
  name: string;
  revision: number;
  spec: {
    scope: string;
    images_allow: string[];
    images_deny: string[];
    max_gpus?: number | null;
    required_labels: string[];
    volume_roots: string[];
  };
}

export interface PolicyListing {
  policies: Policy[];
}

/** A namespace and its quota (absent limits are unlimited). */
export interface Namespace {
  name: string;
  revision: number;
  spec: { quota: { gpus?: number | null; cpu_millis?: number | null; memory_mib?: number | null; workloads?: number | null } };
}

export interface NamespaceListing {
  namespaces: Namespace[];
}

/** An API key as auth.list_keys and auth.revoke_key show it: never the key. */
export interface ApiKey {
  name: string;
  revision: number;
  role: string;
  namespaces: string[];
  families: string[];
  expires_at_ms: number;
  revoked: boolean;
}

export interface ApiKeyListing {
  keys: ApiKey[];
}

/** auth.create_key: the key, shown this once. */
export interface CreatedKey {
  api_key: string;
  key: ApiKey;
}

/** config.delete and secret.delete: the revision that deletes it. */
export interface ValuesDeleted {
  name: string;
  revision: number;
}
