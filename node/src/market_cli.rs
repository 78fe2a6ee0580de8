//! `clawnode market`: the order book, selling this node's GPUs, bids that lease in one step (with
//! progress while the escrow is funded and the workload starts), leases, and cancelling a lease.

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use claw_api::market::{
    BidParams, BidPhases, CancelParams, HistoryParams, LeaseWorkload, LeasesParams, MarketBid,
    MarketHistory, MarketLeaseCancel, MarketLeases, MarketOffers, MarketSell, OffersParams,
    PaymentChoice, SellParams, SellWindow,
};

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
        /// Show the book again every 2 s until interrupted.
        #[arg(long)]
        watch: bool,
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
        /// Sell only within this daily window, HH:MM-HH:MM (e.g. 08:00-18:00): offers appear
        /// and leave on schedule, and no lease runs past its close.
        #[arg(long, conflicts_with = "stop")]
        window: Option<String>,
        /// The time zone the window is read in (IANA, e.g. Europe/Paris).
        #[arg(long, default_value = "UTC", requires = "window")]
        time_zone: String,
    },
    /// End a lease this node bought, and settle it on chain.
    Cancel {
        /// The lease id.
        lease_id: String,
    },
    /// What GPU-hours cleared at: settled leases, checked on chain, with daily percentiles.
    History {
        /// Only this GPU model (exact).
        #[arg(long)]
        model: Option<String>,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// How far back: a number of days (`7d`) or hours (`24h`).
        #[arg(long, default_value = "7d", value_parser = parse_age)]
        since: u64,
        /// List at most this many trades (newest first).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `7d` or `24h` as milliseconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let (number, unit_ms) = if let Some(days) = text.strip_suffix('d') {
        (days, 86_400_000)
    } else if let Some(hours) = text.strip_suffix('h') {
        (hours, 3_600_000)
    } else {
        return Err(format!(
            "{text:?} is not a number of days (7d) or hours (24h)"
        ));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| format!("{text:?} is not a number of days (7d) or hours (24h)"))
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

/// An optional field of an answer as a table shows it: `-` when absent.
fn text(value: Option<&impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// A bid's phases on one line.
fn phases(phases: &BidPhases) -> String {
    format!(
        "match {}, lease request {}, escrow funding {}, workload start {}, accept+fund+start {}, total {}",
        phases.matching,
        phases.lease_request,
        text(phases.escrow_funding.as_ref()),
        text(phases.workload_start.as_ref()),
        phases.accept_fund_start,
        phases.total
    )
}

/// `clawnode market …`: one function per subcommand.
pub(crate) fn market(global: &GlobalArgs, command: MarketCommand) -> Result<()> {
    match command {
        MarketCommand::Offers {
            model,
            max_price,
            min_gpus,
            watch,
        } => ops::watching(watch, || {
            offers(global, model.clone(), max_price.clone(), min_gpus)
        }),
        MarketCommand::Bid(args) => bid(global, args),
        MarketCommand::Leases { state } => leases(global, state),
        MarketCommand::Sell {
            price,
            stop,
            window,
            time_zone,
        } => {
            let window = window
                .map(|text| {
                    let (from, until) = text
                        .split_once('-')
                        .with_context(|| format!("--window {text:?} is not HH:MM-HH:MM"))?;
                    anyhow::Ok(SellWindow {
                        from: from.to_owned(),
                        until: until.to_owned(),
                        time_zone,
                    })
                })
                .transpose()?;
            sell(global, price, stop, window)
        }
        MarketCommand::Cancel { lease_id } => cancel(global, lease_id),
        MarketCommand::History {
            model,
            region,
            since,
            limit,
        } => history(
            global,
            HistoryParams {
                model,
                region,
                since_ms: Some(ops::now_ms().saturating_sub(since)),
                until_ms: None,
                limit: Some(limit),
            },
        ),
    }
}

/// `clawnode market history`: the daily percentiles, then the newest trades, as tables.
fn history(global: &GlobalArgs, params: HistoryParams) -> Result<()> {
    let answer = ops::call::<MarketHistory>(global, &params, None, None)?;
    if global.json {
        print_json(&answer);
        return Ok(());
    }
    let model = |name: &str, simulated: bool| {
        if simulated {
            format!("{name} (simulated)")
        } else {
            name.to_owned()
        }
    };
    let days: Vec<Vec<String>> = answer
        .days
        .iter()
        .map(|d| {
            vec![
                d.day.clone(),
                model(&d.gpu_model, d.simulated),
                text(d.region.as_ref()),
                d.trades.to_string(),
                d.gpu_hours.to_string(),
                d.min.clone(),
                d.p50.clone(),
                d.p90.clone(),
                d.max.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "DAY", "MODEL", "REGION", "TRADES", "GPU-H", "MIN", "P50", "P90", "MAX",
        ],
        &days,
    );
    if answer.trades.is_empty() {
        return Ok(());
    }
    println!(
        "\n{} of {} trades, newest first (settlements on chain):",
        answer.trades.len(),
        answer.matching
    );
    let trades: Vec<Vec<String>> = answer
        .trades
        .iter()
        .map(|t| {
            vec![
                ops::when(Some(t.settled_ms)),
                t.lease_id.clone(),
                model(&t.gpu_model, t.simulated),
                format!("{} × {} h", t.gpus, t.hours),
                format!("{}/h", t.price_per_gpu_hour),
                t.paid_to_provider.clone(),
                t.settlement.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "SETTLED",
            "LEASE",
            "MODEL",
            "GPUS",
            "PRICE",
            "PAID",
            "SETTLEMENT",
        ],
        &trades,
    );
    Ok(())
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
    let rows: Vec<Vec<String>> = answer
        .offers
        .iter()
        .map(|o| {
            let mut model = o.gpu_model.clone();
            if o.simulated {
                model.push_str(" (simulated)");
            }
            vec![
                text(o.node.as_ref()),
                model,
                o.gpus.to_string(),
                format!("{} MiB", o.vram_mib),
                format!("{}/h", o.price_per_gpu_hour),
                format!("{}-{} h", o.min_hours, o.max_hours),
                o.reputation.to_string(),
                text(o.provider.as_ref()),
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
    if !answer.matched {
        println!("{}", text(answer.explanation.as_ref()));
        for near in answer.nearest.iter().flatten() {
            println!(
                "  nearest: {} × {} at {}/h (fails: {})",
                near.gpus,
                near.gpu_model,
                near.price_per_gpu_hour,
                near.fails.join(", ")
            );
        }
        bail!("no offer matches the bid");
    }
    let offer = answer
        .offer
        .as_ref()
        .context("the node answered a match without its offer")?;
    println!(
        "best offer: {} at {}/h from {} (total {} MOLT)",
        offer.gpu_model, offer.price_per_gpu_hour, offer.provider, offer.total
    );
    if let Some(lease) = &answer.lease {
        println!(
            "lease {} {}: workload {} on GPUs {}",
            lease.lease_id,
            lease.state,
            text(lease.workload_id.as_ref()),
            lease.gpus.join(", ")
        );
        if let Some(timing) = &answer.phases_ms {
            println!("phases (ms): {}", phases(timing));
        }
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
    let rows: Vec<Vec<String>> = answer
        .leases
        .iter()
        .map(|l| {
            vec![
                l.lease_id.clone(),
                l.side.to_string(),
                l.state.to_string(),
                text(l.gpu_model.as_ref()),
                l.gpus.len().to_string(),
                text(l.amount.as_ref()),
                text(l.to_provider.as_ref()),
                text(l.workload_id.as_ref()),
                text(l.waiting_for.as_ref()),
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
fn sell(
    global: &GlobalArgs,
    price: Option<String>,
    stop: bool,
    window: Option<SellWindow>,
) -> Result<()> {
    let params = match price {
        Some(price) if !stop => SellParams {
            price_per_gpu_hour: Some(price),
            stop: false,
            window,
        },
        _ => SellParams {
            price_per_gpu_hour: None,
            stop: true,
            window: None,
        },
    };
    let answer = ops::call::<MarketSell>(global, &params, None, None)?;
    if global.json {
        print_json(&answer);
    } else {
        if answer.selling {
            println!(
                "selling at {} MOLT/GPU-hour{}",
                text(answer.price_per_gpu_hour.as_ref()),
                answer
                    .window
                    .as_ref()
                    .map(|w| format!(", daily {} to {} ({})", w.from, w.until, w.time_zone))
                    .unwrap_or_default()
            );
        } else {
            println!("not selling; offers withdrawn");
        }
        let rows: Vec<Vec<String>> = answer
            .offers
            .iter()
            .map(|o| {
                vec![
                    o.gpu_model.clone(),
                    o.gpus.to_string(),
                    o.price_per_gpu_hour.clone(),
                    if o.withdrawn { "withdrawn" } else { "on offer" }.to_owned(),
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
            answer.lease_id,
            answer.state,
            text(answer.to_provider.as_ref()),
            text(answer.to_buyer.as_ref()),
            text(answer.settlement_signature.as_ref())
        );
    }
    Ok(())
}
