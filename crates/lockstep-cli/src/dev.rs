//! `lockstep dev`: a local 3-node cluster on loopback, with the example workflows applied.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lockstep_client::{Client, Identity, Options, request_id};
use lockstep_core::ActorKind;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the nodes keep their data (one folder per node).
    #[arg(long, default_value = ".lockstep/dev")]
    pub data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
    /// Number of nodes (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// The lockstepd binary (defaults to the one next to this lockstep binary).
    #[arg(long)]
    pub lockstepd: Option<PathBuf>,
    /// Workflow files or folders to apply once the cluster is up.
    #[arg(long, default_value = "examples/workflows")]
    pub workflows: PathBuf,
    /// Start with empty data folders.
    #[arg(long)]
    pub fresh: bool,
    /// Port of node 1's web console (http://127.0.0.1:PORT/); nodes 2 and 3 use the next two.
    /// 0 turns the console off.
    #[arg(long, default_value_t = 7180)]
    pub console_port: u16,
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lockstepd_path(args: &DevArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.lockstepd {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("lockstepd");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "lockstepd not found next to {}; build it (cargo build -p lockstep-server) or pass --lockstepd",
        me.display()
    )
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if ![1, 3, 5].contains(&args.nodes) {
        bail!("--nodes must be 1, 3 or 5");
    }
    let binary = lockstepd_path(&args)?;
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing {}", args.data_dir.display()))?;
    }
    let endpoints: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", args.base_port + i))
        .collect();
    let consoles: Vec<Option<String>> = (0..args.nodes)
        .map(|i| (args.console_port != 0).then(|| format!("127.0.0.1:{}", args.console_port + i)))
        .collect();
    let members: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect();
    let members = members.join(",");
    std::fs::create_dir_all(&args.data_dir)?;
    let webhooks = dev_webhooks(&args.data_dir)?;
    let mut nodes = Nodes(Vec::new());
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = i + 1;
        let dir = args.data_dir.join(format!("node{id}"));
        let log = std::fs::File::create(args.data_dir.join(format!("node{id}.log")))?;
        let mut command = Command::new(&binary);
        if let Some(console) = &consoles[i] {
            command.args(["--console-listen", console]);
        }
        let child = command
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                endpoint,
                "--initial-members",
                &members,
                "--dev",
            ])
            .arg("--webhooks")
            .arg(&webhooks)
            .arg("--data-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        nodes.0.push(child);
    }
    let client = Client::new(
        &endpoints,
        Some(Identity::new("lockstep-dev", ActorKind::Human, &["admin"])),
        Options::default(),
    )
    .map_err(anyhow::Error::msg)?;
    wait_for_leader(&client, &mut nodes, &args.data_dir).await?;
    let applied = apply_examples(&client, &args.workflows).await?;
    println!(
        "Lockstep is running: {} node(s) on loopback, data in {}",
        args.nodes,
        args.data_dir.display()
    );
    for (i, e) in endpoints.iter().enumerate() {
        println!(
            "  node {}  {e}   log: {}",
            i + 1,
            args.data_dir.join(format!("node{}.log", i + 1)).display()
        );
    }
    if let Some(console) = &consoles[0] {
        println!(
            "Console: http://{console}/  (sign in as anyone: e.g. alice, or bob with the role approver)"
        );
    }
    println!(
        "Applied workflows: {}",
        if applied.is_empty() {
            "none".into()
        } else {
            applied.join(", ")
        }
    );
    println!("\nTry:");
    println!(
        "  lockstep create purchase-order --key PO-1 --data '{{\"amount\": 500, \"requester\": \"alice\"}}' --as alice"
    );
    println!("  lockstep transition purchase-order/PO-1 submit --as alice");
    println!("  lockstep get purchase-order/PO-1");
    println!("  lockstep cluster status --digest");
    println!(
        "  lockstep subscriptions create mine --url http://127.0.0.1:9000/hook --secret dev --workflow purchase-order"
    );
    println!(
        "  (webhooks: loopback targets allowed; the secret `dev` is in {})",
        webhooks.display()
    );
    println!("\nPress Ctrl-C to stop the cluster.");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = watch_children(&mut nodes) => {}
    }
    println!("\nstopping the nodes...");
    drop(nodes);
    println!(
        "stopped; data kept in {} (use --fresh to start over)",
        args.data_dir.display()
    );
    Ok(())
}

/// The development cluster's webhook settings (`lockstepd --webhooks`): loopback targets
/// allowed, and a signing secret `dev` made on the first start (kept after, so receivers
/// that verify it keep working; edit the file and restart to change it).
fn dev_webhooks(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("webhooks.toml");
    if !path.exists() {
        let secret = format!("dev-{}", request_id().replace('-', ""));
        std::fs::write(
            &path,
            format!(
                "# lockstep dev: webhook settings of every node (see lockstepd --help, --webhooks).\nallow = [\"127.0.0.0/8\", \"localhost\"]\ntimeout = \"5s\"\nattempts = 5\nbackoff_max = \"10s\"\n\n[secrets]\ndev = \"{secret}\"\n"
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

async fn watch_children(nodes: &mut Nodes) {
    loop {
        for (i, child) in nodes.0.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("node {} exited ({status}); see its log", i + 1);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_leader(client: &Client, nodes: &mut Nodes, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, child) in nodes.0.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join(format!("node{}.log", i + 1)))
                    .unwrap_or_default();
                bail!(
                    "node {} exited during start-up ({status}):\n{}",
                    i + 1,
                    log.lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
        if let Ok(s) = client.status_of(0, false).await
            && s.leader_id.is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no leader was elected within 30 s; see the node logs in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_examples(client: &Client, path: &Path) -> anyhow::Result<Vec<String>> {
    let files = if path.is_dir() {
        crate::online::yaml_files(path)
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    };
    let mut applied = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file)?;
        // Development applies what is on disk, committed or not (a dirty file says so).
        let provenance = crate::git::provenance(&file, true)?;
        let r = client
            .apply_definition(&request_id(), &source, provenance)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
        applied.push(r.workflow);
    }
    Ok(applied)
}
