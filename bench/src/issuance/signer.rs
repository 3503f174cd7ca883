//! `issuance --mode signer`: `Signer::sign_csr` on OS threads, no I/O at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wardmesh_identity::ca::{IssuedSvid, Signer};
use wardmesh_identity::keygen::KeyAndCsr;
use wardmesh_identity::seal::SealKey;
use wardmesh_identity::svid::{certs_from_pem, inspect_leaf};
use wardmesh_identity::{SpiffeId, TrustDomain};

use super::{Args, LEAF_TTL, agent_id, generate_csrs, init_ca, temp_home, trust_domain};
use crate::machine::{CpuSnapshot, nproc};
use crate::stats::{Errors, Row, Summary, Table};

pub fn run(args: &Args, threads: usize, table: &mut Table) -> anyhow::Result<()> {
    let home = temp_home(args)?;
    let seal = SealKey::generate();
    let dir = init_ca(&home.path().join("ca"), &seal)?;
    let ca = dir
        .load(&seal, time::OffsetDateTime::now_utc())
        .context("loading the CA just created")?;
    let td = trust_domain()?;
    let pool = args.csr_pool.max(1);
    let ids = (0..pool)
        .map(|i| agent_id(&td, i))
        .collect::<anyhow::Result<Vec<_>>>()?;

    eprintln!("signer: generating {pool} agent keys and CSRs (untimed) …");
    let (csrs, keygen) = generate_csrs(
        "signer: agent keygen + csr",
        &ids,
        nproc(),
        args.setup_limit(),
    )?;
    table.push(keygen);

    eprintln!(
        "signer: signing for {} s on {threads} thread(s) …",
        args.phase_length().as_secs()
    );
    let row = measure(args, threads, &ca.signer, &td, &ids, &csrs);
    println!(
        "signer: {} certificates in {:.2} s = {:.0}/s",
        row.summary.ops,
        row.summary.elapsed.as_secs_f64(),
        row.summary.per_second()
    );
    table.push(row);
    Ok(())
}

fn measure(
    args: &Args,
    threads: usize,
    signer: &Arc<Signer>,
    td: &TrustDomain,
    ids: &[SpiffeId],
    csrs: &[KeyAndCsr],
) -> Row {
    let errors = Errors::default();
    let per_thread_cap = args.max_ops.div_ceil(threads).max(1);
    let cpu0 = CpuSnapshot::now();
    let start = Instant::now();
    let deadline = start + args.phase_length();
    let results: Vec<(Vec<Duration>, Option<IssuedSvid>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let errors = &errors;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_thread_cap.min(1 << 20));
                    let mut last = None;
                    let mut k = 0usize;
                    while lat.len() < per_thread_cap && Instant::now() < deadline {
                        let i = (t + k * threads) % csrs.len();
                        k += 1;
                        let t0 = Instant::now();
                        let res = signer.sign_csr(
                            csrs[i].csr_pem.as_bytes(),
                            &ids[i],
                            LEAF_TTL,
                            time::OffsetDateTime::now_utc(),
                        );
                        match res {
                            Ok(svid) => {
                                lat.push(t0.elapsed());
                                last = Some(svid);
                            }
                            Err(e) => errors.record(format!("sign_csr for {}: {e}", ids[i])),
                        }
                    }
                    (lat, last)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed();
    let cpu = CpuSnapshot::now().since(&cpu0);

    let mut lat = Vec::new();
    for (l, last) in results {
        lat.extend(l);
        // What was issued must be a real X509-SVID for the requested identity.
        if let Some(svid) = last {
            check_issued(&svid, td, &errors);
        }
    }
    errors.print("signer.sign_csr");
    Row {
        name: "signer: sign_csr (validate + sign)".into(),
        concurrency: threads,
        summary: Summary::new(lat, elapsed),
        errors: errors.count(),
        cpu,
        timed: true,
    }
}

fn check_issued(svid: &IssuedSvid, td: &TrustDomain, errors: &Errors) {
    match inspect_leaf(&svid.leaf) {
        Ok(info) if info.spiffe_id == svid.spiffe_id && info.spiffe_id.trust_domain() == td => {}
        Ok(info) => errors.record(format!(
            "issued leaf names {} but {} was requested",
            info.spiffe_id, svid.spiffe_id
        )),
        Err(e) => errors.record(format!("issued leaf is not an X509-SVID: {e}")),
    }
    match certs_from_pem(&svid.chain_pem) {
        Ok(chain) if chain.len() == 2 && chain[0] == svid.leaf => {}
        Ok(chain) => errors.record(format!(
            "issued chain has {} certificates, expected leaf + intermediate",
            chain.len()
        )),
        Err(e) => errors.record(format!("issued chain does not parse: {e}")),
    }
}
