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

/** `market.sell`'s answer on one node (through `fleet.invoke`). */
export interface MarketSell {
  offers?: { gpus: number; withdrawn?: boolean }[];
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
}

export interface DeploymentList {
  deployments: DeploymentRevision[];
}

export interface DeploymentDeleted {
  name: string;
  revision: number;
}
