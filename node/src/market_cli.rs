//! `clawnode market`: the order book, selling this node's GPUs, bids that lease in one step (with
//! progress while the escrow is funded and the workload starts), leases, and cancelling a lease.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use claw_api::market::{
    BidParams, CancelParams, LeaseWorkload, LeasesParams, MarketBid, MarketLeaseCancel,
    MarketLeases, MarketOffers, MarketSell, OffersParams, PaymentChoice, SellParams,
};
use serde_json::Value;

use crate::{GlobalArgs, ops, print_json, print_table};

/// `clawnode market …`.
#[derive(Debug, Subcommand)]
pub(crate) enum MarketCommand {
    /// GPU offers in the order book, cheapest first.
    Offers {
        /// Only models whose name contains this (e.g. H100).
        #[arg(long)]
        model: Option<String>,
        /// Only offers at or below this price per GPU-hour, in MOLT.
        #[arg(long)]
        max_price: Option<String>,
        /// Only offers of at least this many GPUs on one node.
        #[arg(long)]
        min_gpus: Option<u32>,
    },
    /// Bid for GPUs: lease the best offer and run a workload on it, or say why nothing matches.
    Bid(BidArgs),
    /// This node's leases, as buyer and as provider.
    Leases {
        /// Only leases in this state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Rent out this node's free GPUs at a price per GPU-hour (or change it), or stop selling.
    Sell {
        /// MOLT per GPU-hour.
        #[arg(long, required_unless_present = "stop", conflicts_with = "stop")]
        price: Option<String>,
        /// Withdraw the offers; running leases go on.
        #[arg(long)]
        stop: bool,
    },
    /// End a lease this node bought, and settle it on chain.
    Cancel {
        /// The lease id.
        lease_id: String,
    },
}

/// `clawnode market bid`.
#[derive(Debug, Args)]
pub(crate) struct BidArgs {
    /// Acceptable GPU model (repeat for several), as NVML names it.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// GPUs wanted, on one node.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Lease length, hours.
    #[arg(long, default_value_t = 1)]
    hours: u32,
    /// Highest price per GPU-hour, MOLT.
    #[arg(long)]
    max_price: String,
    /// Minimum memory per GPU, MiB.
    #[arg(long, default_value_t = 0)]
    min_vram_mib: u64,
    /// Only offers from this region.
    #[arg(long)]
    region: Option<String>,
    /// Only offers backed by real, NVML-attested GPUs.
    #[arg(long)]
    attested_only: bool,
    /// Minimum provider reputation, 0 to 100.
    #[arg(long, default_value_t = 0)]
    min_reputation: u32,
    /// Accept simulated GPUs.
    #[arg(long)]
    accept_simulated: bool,
    /// Image to run on the leased GPUs. Without it the bid only matches (nothing is paid).
    #[arg(long)]
    image: Option<String>,
    /// Command and arguments for the image (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `clawnode market …`: one function per subcommand.
pub(crate) fn market(global: &GlobalArgs, command: MarketCommand) -> Result<()> {
    match command {
        MarketCommand::Offers {
            model,
            max_price,
            min_gpus,
        } => offers(global, model, max_price, min_gpus),
        MarketCommand::Bid(args) => bid(global, args),
        MarketCommand::Leases { state } => leases(global, state),
        MarketCommand::Sell { price, stop } => sell(global, price, stop),
        MarketCommand::Cancel { lease_id } => cancel(global, lease_id),
    }
}

/// `clawnode market offers`: the order book, filtered, as a table.
fn offers(
    global: &GlobalArgs,
    model: Option<String>,
    max_price: Option<String>,
    min_gpus: Option<u32>,
) -> Result<()> {
    let params = OffersParams {
        model,
        max_price,
        min_gpus,
        limit: None,
    };
    let answer = ops::call::<MarketOffers>(global, &params, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["offers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let mut model = text(&o["gpu_model"]);
            if o["simulated"] == true {
                model.push_str(" (simulated)");
            }
            vec![
                text(&o["node"]),
                model,
                text(&o["gpus"]),
                format!("{} MiB", text(&o["vram_mib"])),
                format!("{}/h", text(&o["price_per_gpu_hour"])),
                format!("{}-{} h", text(&o["min_hours"]), text(&o["max_hours"])),
                text(&o["reputation"]),
                text(&o["provider"]),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE", "MODEL", "GPUS", "VRAM", "PRICE", "HOURS", "REP", "PROVIDER",
        ],
        &rows,
    );
    Ok(())
}

/// `clawnode market bid`: matches the bid and, given an image, leases the offer and runs it; an
/// unmatched bid prints why and the nearest offers, and fails.
fn bid(global: &GlobalArgs, args: BidArgs) -> Result<()> {
    let workload = args.image.map(|image| LeaseWorkload {
        image,
        command: args.command,
        env: Default::default(),
        cpus: None,
        memory_mib: None,
        writable_root: false,
    });
    let leasing = workload.is_some();
    let params = BidParams {
        models: args.models,
        gpus: args.gpus,
        hours: args.hours,
        max_price: args.max_price,
        min_vram_mib: args.min_vram_mib,
        region: args.region,
        attested_only: args.attested_only,
        min_reputation: args.min_reputation,
        accept_simulated: args.accept_simulated,
        workload,
        payment: PaymentChoice::Escrow,
    };
    let key = leasing.then(|| ops::fresh_key("bid"));
    let answer = ops::call::<MarketBid>(global, &params, None, key)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    if answer["matched"] != true {
        println!("{}", text(&answer["explanation"]));
        for near in answer["nearest"].as_array().into_iter().flatten() {
            println!(
                "  nearest: {} × {} at {}/h (fails: {})",
                text(&near["gpus"]),
                text(&near["gpu_model"]),
                text(&near["price_per_gpu_hour"]),
                near["fails"]
                    .as_array()
                    .map(|f| f.iter().map(text).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
        }
        bail!("no offer matches the bid");
    }
    let offer = &answer["offer"];
    println!(
        "best offer: {} at {}/h from {} (total {} MOLT)",
        text(&offer["gpu_model"]),
        text(&offer["price_per_gpu_hour"]),
        text(&offer["provider"]),
        text(&offer["total"])
    );
    if answer["leased"] == true {
        let lease = &answer["lease"];
        println!(
            "lease {} {}: workload {} on GPUs {}",
            text(&lease["lease_id"]),
            text(&lease["state"]),
            text(&lease["workload_id"]),
            text(&lease["gpus"])
        );
        println!("phases (ms): {}", answer["phases_ms"]);
    }
    Ok(())
}

/// `clawnode market leases`: this node's leases, as a table.
fn leases(global: &GlobalArgs, state: Option<String>) -> Result<()> {
    let params = LeasesParams { state, side: None };
    let answer = ops::call::<MarketLeases>(global, &params, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                text(&l["lease_id"]),
                text(&l["side"]),
                text(&l["state"]),
                text(&l["gpu_model"]),
                l["gpus"].as_array().map_or(0, Vec::len).to_string(),
                text(&l["amount"]),
                text(&l["to_provider"]),
                text(&l["workload_id"]),
                text(&l["waiting_for"]),
            ]
        })
        .collect();
    print_table(
        &[
            "LEASE",
            "SIDE",
            "STATE",
            "MODEL",
            "GPUS",
            "ESCROW",
            "PAID",
            "WORKLOAD",
            "WAITING FOR",
        ],
        &rows,
    );
    Ok(())
}

/// `clawnode market sell`: sells this node's GPUs at a price, or withdraws its offers.
fn sell(global: &GlobalArgs, price: Option<String>, stop: bool) -> Result<()> {
    let params = match price {
        Some(price) if !stop => SellParams {
            price_per_gpu_hour: Some(price),
            stop: false,
        },
        _ => SellParams {
            price_per_gpu_hour: None,
            stop: true,
        },
    };
    let answer = ops::call::<MarketSell>(global, &params, None, None)?;
    if global.json {
        print_json(&answer);
    } else {
        if answer["selling"] == true {
            println!(
                "selling at {} MOLT/GPU-hour",
                text(&answer["price_per_gpu_hour"])
            );
        } else {
            println!("not selling; offers withdrawn");
        }
        let rows: Vec<Vec<String>> = answer["offers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                vec![
                    text(&o["gpu_model"]),
                    o["gpus"].to_string(),
                    text(&o["price_per_gpu_hour"]),
                    if o["withdrawn"] == true {
                        "withdrawn"
                    } else {
                        "on offer"
                    }
                    .to_owned(),
                ]
            })
            .collect();
        print_table(&["MODEL", "GPUS", "MOLT/GPU-H", "OFFER"], &rows);
    }
    Ok(())
}

/// `clawnode market cancel`: ends a lease this node bought and prints how it settled.
fn cancel(global: &GlobalArgs, lease_id: String) -> Result<()> {
    let answer = ops::call::<MarketLeaseCancel>(global, &CancelParams { lease_id }, None, None)?;
    if global.json {
        print_json(&answer);
    } else {
        println!(
            "lease {} {}: {} MOLT to the provider, {} back (signature {})",
            text(&answer["lease_id"]),
            text(&answer["state"]),
            text(&answer["to_provider"]),
            text(&answer["to_buyer"]),
            text(&answer["settlement_signature"])
        );
    }
    Ok(())
}
