//! The one owner of dockerd: a task that holds the process and decides what happens to it. Commands
//! (start, stop, restart, shutdown) arrive over a channel; the state is published on a `watch` channel,
//! so `status` never waits for a start in progress, and a shutdown is the next thing the owner does once
//! the step it is in (at most one stop) ends. No lock is held across a start: starting is a state the
//! owner polls (spawned → answering `/_ping`, or exited, or too slow), not a loop inside a command.
use crate::control::{Command, Reply};
use crate::error::Result;
use ferry_contract::restart::delay as backoff;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// What the owner drives: dockerd in the appliance, a fake child process in the tests.
#[allow(async_fn_in_trait)] // the owner runs on the runtime's main task: its futures need not be Send
pub trait Daemon {
    /// Before each start: read the settings it starts with (the profile, daemon.json, TLS material).
    async fn prepare(&mut self);
    /// Start the process; returns at once.
    fn spawn(&mut self) -> Result<()>;
    /// Does it answer (dockerd: `GET /_ping` on its socket)?
    async fn ready(&mut self) -> bool;
    /// Reap it if it exited: a description of the exit, once.
    fn exited(&mut self) -> Option<String>;
    /// Stop it gracefully (containers get SIGTERM), then kill; false when nothing was running.
    async fn stop(&mut self) -> Result<bool>;
    fn pid(&self) -> Option<u32>;
    /// Why a start failed, from its log, for the reply.
    fn failure_detail(&self) -> String;
    /// Periodic work while the owner idles (a generated certificate following the addresses).
    fn housekeeping(&mut self) {}
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Stopped,
    Starting,
    Running(u32),
    /// Exited or failed to start while wanted; starts again after the back-off.
    Waiting(String),
    Stopping,
    ShutDown,
}

impl State {
    /// The `status` reply, LSB style (0 running, 3 not running).
    pub fn reply(&self) -> Reply {
        match self {
            State::Running(pid) => Reply { code: 0, text: format!("docker is running (pid {pid})") },
            State::Starting => Reply { code: 3, text: "docker is starting".into() },
            State::Stopping => Reply { code: 3, text: "docker is stopping".into() },
            State::Waiting(why) => Reply { code: 3, text: format!("docker is not running ({why}); it starts again shortly") },
            State::Stopped | State::ShutDown => Reply { code: 3, text: "docker is not running".into() },
        }
    }
}

/// How long a start may take before its callers are told it failed (dockerd keeps starting).
pub const START_LIMIT: Duration = Duration::from_secs(90);
const TICK: Duration = Duration::from_millis(250);
const HOUSEKEEPING_EVERY: u32 = 40;
/// A dockerd that ran this long before it died counts as healthy: the back-off starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

type Request = (Command, oneshot::Sender<Reply>);

/// The owner's address: commands go in, the state is read without asking the owner.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    state: watch::Receiver<State>,
}

impl Handle {
    pub async fn send(&self, cmd: Command) -> Reply {
        if cmd == Command::Status {
            return self.state.borrow().reply();
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send((cmd, tx)).await.is_err() {
            return Reply { code: 1, text: "the engine manager is shutting down".into() };
        }
        rx.await.unwrap_or(Reply { code: 1, text: "the engine manager is shutting down".into() })
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }
}

pub struct Owner<D: Daemon> {
    d: D,
    rx: mpsc::Receiver<Request>,
    state: watch::Sender<State>,
    wanted: bool,
    failures: u32,
    /// When the current start began, and when the last exit or failed start happened.
    started: Option<Instant>,
    retry_at: Option<Instant>,
    /// Callers of start/restart waiting for the engine to answer.
    waiting: Vec<oneshot::Sender<Reply>>,
    log: fn(&str),
}

impl<D: Daemon> Owner<D> {
    /// An owner of `d`. It starts `d` on its first tick, unless `d` already runs (a dockerd adopted from a
    /// previous engine manager), which it then watches as running.
    pub fn new(d: D, log: fn(&str)) -> (Owner<D>, Handle) {
        let (tx, rx) = mpsc::channel(16);
        let initial = match d.pid() {
            Some(pid) => State::Running(pid),
            None => State::Stopped,
        };
        let (state, state_rx) = watch::channel(initial);
        let o = Owner { d, rx, state, wanted: true, failures: 0, started: None, retry_at: Some(Instant::now()), waiting: vec![], log };
        (o, Handle { tx, state: state_rx })
    }

    fn set(&self, s: State) {
        self.state.send_replace(s);
    }

    fn current(&self) -> State {
        self.state.borrow().clone()
    }

    fn answer_waiting(&mut self, r: &Reply) {
        for w in self.waiting.drain(..) {
            let _ = w.send(Reply { code: r.code, text: r.text.clone() });
        }
    }

    /// Run until a shutdown command has stopped the daemon. Commands come first (a shutdown is never
    /// queued behind a start), then the periodic checks.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                biased;
                req = self.rx.recv() => match req {
                    Some((cmd, reply)) => {
                        if self.on_command(cmd, reply).await {
                            return;
                        }
                    }
                    None => {
                        self.shut_down().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    self.on_tick(n.is_multiple_of(HOUSEKEEPING_EVERY)).await;
                }
            }
        }
    }

    /// Returns true when the owner is done (shutdown).
    async fn on_command(&mut self, cmd: Command, reply: oneshot::Sender<Reply>) -> bool {
        match cmd {
            Command::Status => {
                let _ = reply.send(self.current().reply());
            }
            Command::Start => {
                self.wanted = true;
                match self.current() {
                    State::Running(_) => {
                        let _ = reply.send(Reply { code: 0, text: "docker is already running".into() });
                    }
                    State::Starting => self.waiting.push(reply),
                    _ => {
                        self.waiting.push(reply);
                        self.begin_start().await;
                    }
                }
            }
            Command::Stop => {
                self.wanted = false;
                let r = self.stop_now().await;
                let _ = reply.send(r);
            }
            Command::Restart => {
                self.stop_now().await;
                // The start is the next tick's: a shutdown that arrived meanwhile is handled first.
                self.wanted = true;
                self.retry_at = Some(Instant::now());
                self.set(State::Waiting("restarting".into()));
                self.waiting.push(reply);
            }
            Command::Shutdown => {
                self.shut_down().await;
                let _ = reply.send(Reply { code: 0, text: "docker stopped; the engine manager is shutting down".into() });
                return true;
            }
        }
        false
    }

    async fn stop_now(&mut self) -> Reply {
        self.answer_waiting(&Reply { code: 1, text: "docker was stopped before it answered".into() });
        self.set(State::Stopping);
        let t = Instant::now();
        let r = match self.d.stop().await {
            Ok(true) => {
                (self.log)(&format!("dockerd stopped in {:.2}s", t.elapsed().as_secs_f64()));
                Reply { code: 0, text: "docker stopped".into() }
            }
            Ok(false) => Reply { code: 0, text: "docker was not running".into() },
            Err(e) => Reply { code: 1, text: format!("ERROR: {e}") },
        };
        self.set(State::Stopped);
        r
    }

    async fn shut_down(&mut self) {
        self.wanted = false;
        (self.log)("stopping dockerd (containers get SIGTERM)");
        let _ = self.stop_now().await;
        self.set(State::ShutDown);
    }

    async fn begin_start(&mut self) {
        self.d.prepare().await;
        match self.d.spawn() {
            Ok(()) => {
                self.started = Some(Instant::now());
                self.set(State::Starting);
            }
            Err(e) => self.failed(format!("ERROR: {e}")),
        }
    }

    /// A start failed or the daemon died: tell the waiting callers, count it, wait before the next try.
    fn failed(&mut self, why: String) {
        if self.started.is_some_and(|t| t.elapsed() > HEALTHY_AFTER) {
            self.failures = 0;
        }
        self.failures += 1;
        let wait = backoff(self.failures);
        self.answer_waiting(&Reply { code: 1, text: why.clone() });
        (self.log)(&format!("{}; restarting in {}s", why.lines().next().unwrap_or(""), wait.as_secs()));
        self.retry_at = Some(Instant::now() + wait);
        self.started = None;
        self.set(State::Waiting(why.lines().next().unwrap_or("").to_string()));
    }

    async fn on_tick(&mut self, housekeeping: bool) {
        match self.current() {
            State::Starting => {
                if let Some(status) = self.d.exited() {
                    let detail = self.d.failure_detail();
                    self.failed(format!("dockerd exited during start ({status}); the end of its log:\n{detail}"));
                } else if self.d.ready().await {
                    let pid = self.d.pid().unwrap_or(0);
                    let took = self.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
                    (self.log)(&format!("engine ready: dockerd answered /_ping after {took:.2}s"));
                    self.set(State::Running(pid));
                    self.answer_waiting(&Reply { code: 0, text: "docker started".into() });
                } else if self.started.is_some_and(|t| t.elapsed() > START_LIMIT) && !self.waiting.is_empty() {
                    let r =
                        Reply { code: 1, text: format!("docker did not answer within {}s; still waiting for it", START_LIMIT.as_secs()) };
                    (self.log)(&r.text);
                    self.answer_waiting(&r);
                }
            }
            State::Running(_) => {
                if let Some(status) = self.d.exited() {
                    self.failed(format!("dockerd exited ({status})"));
                }
            }
            State::Waiting(_) | State::Stopped if self.wanted && self.retry_at.is_none_or(|t| Instant::now() >= t) => {
                self.begin_start().await;
            }
            _ => {}
        }
        if housekeeping {
            self.d.housekeeping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A fake dockerd: a real child process (`sleep`), "ready" after `ready_after`, a stop that takes
    /// `stop_takes`, and a record of what happened.
    struct Fake {
        child: Option<std::process::Child>,
        spawned: Option<Instant>,
        ready_after: Duration,
        stop_takes: Duration,
        fail_spawn: bool,
        events: Arc<Mutex<Vec<String>>>,
    }

    impl Fake {
        fn new(events: Arc<Mutex<Vec<String>>>) -> Fake {
            Fake {
                child: None,
                spawned: None,
                ready_after: Duration::from_millis(600),
                stop_takes: Duration::from_millis(100),
                fail_spawn: false,
                events,
            }
        }
        fn note(&self, e: &str) {
            self.events.lock().unwrap().push(e.to_string());
        }
    }

    impl Daemon for Fake {
        async fn prepare(&mut self) {
            self.note("prepare");
        }
        fn spawn(&mut self) -> Result<()> {
            if self.fail_spawn {
                return Err(crate::error::Error::msg("no such binary"));
            }
            self.child = Some(std::process::Command::new("sleep").arg("60").spawn().unwrap());
            self.spawned = Some(Instant::now());
            self.note("spawn");
            Ok(())
        }
        async fn ready(&mut self) -> bool {
            self.child.is_some() && self.spawned.is_some_and(|t| t.elapsed() >= self.ready_after)
        }
        fn exited(&mut self) -> Option<String> {
            let st = self.child.as_mut()?.try_wait().ok()??;
            self.child = None;
            Some(st.to_string())
        }
        async fn stop(&mut self) -> Result<bool> {
            let Some(mut c) = self.child.take() else { return Ok(false) };
            self.note("stop");
            tokio::time::sleep(self.stop_takes).await;
            let _ = c.kill();
            let _ = c.wait();
            Ok(true)
        }
        fn pid(&self) -> Option<u32> {
            self.child.as_ref().map(|c| c.id())
        }
        fn failure_detail(&self) -> String {
            "the fake's log".into()
        }
    }

    fn quiet(_: &str) {}

    /// Run `body` against an owner of a fake (adjusted by `setup`) on a single-threaded runtime, the
    /// owner on a task of its own; returns what the fake saw.
    fn drive<Fut: std::future::Future<Output = ()>>(
        setup: impl FnOnce(&mut Fake),
        body: impl FnOnce(Handle, tokio::task::JoinHandle<()>) -> Fut,
    ) -> Vec<String> {
        let events = Arc::new(Mutex::new(vec![]));
        let mut f = Fake::new(events.clone());
        setup(&mut f);
        let (o, h) = Owner::new(f, quiet);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(tokio::task::LocalSet::new().run_until(async move {
            let owner = tokio::task::spawn_local(o.run());
            body(h, owner).await;
        }));
        let seen = events.lock().unwrap().clone();
        seen
    }

    /// `h.send(cmd)` on a task of its own, so the test can look on while it waits.
    fn send_later(h: &Handle, cmd: Command) -> tokio::task::JoinHandle<Reply> {
        let h = h.clone();
        tokio::task::spawn_local(async move { h.send(cmd).await })
    }

    #[test]
    fn status_answers_at_once_while_a_start_is_in_progress() {
        let seen = drive(
            |f| f.ready_after = Duration::from_secs(3),
            |h, _| async move {
                let start = send_later(&h, Command::Start);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let t = Instant::now();
                let s = h.send(Command::Status).await;
                assert!(t.elapsed() < Duration::from_millis(100), "status took {:?}", t.elapsed());
                assert_eq!((s.code, s.text.as_str()), (3, "docker is starting"));
                let r = start.await.unwrap();
                assert_eq!((r.code, r.text.as_str()), (0, "docker started"));
                assert!(matches!(h.state(), State::Running(_)));
                assert_eq!(h.send(Command::Shutdown).await.code, 0);
            },
        );
        assert_eq!(seen, ["prepare", "spawn", "stop"]);
    }

    #[test]
    fn a_shutdown_during_a_start_stops_at_once_and_answers_the_waiting_start() {
        drive(
            |f| f.ready_after = Duration::from_secs(60),
            |h, owner| async move {
                let start = send_later(&h, Command::Start);
                tokio::time::sleep(Duration::from_millis(400)).await;
                let t = Instant::now();
                assert_eq!(h.send(Command::Shutdown).await.code, 0);
                assert!(t.elapsed() < Duration::from_secs(1), "shutdown took {:?}", t.elapsed());
                let s = start.await.unwrap();
                assert_eq!((s.code, s.text.as_str()), (1, "docker was stopped before it answered"));
                owner.await.unwrap();
                assert_eq!(h.state(), State::ShutDown);
            },
        );
    }

    #[test]
    fn a_shutdown_during_a_restart_is_handled_before_the_new_start() {
        let seen = drive(
            |f| {
                f.ready_after = Duration::from_millis(100);
                f.stop_takes = Duration::from_millis(800);
            },
            |h, _| async move {
                assert_eq!(h.send(Command::Start).await.code, 0);
                let restart = send_later(&h, Command::Restart);
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(h.send(Command::Status).await.text, "docker is stopping");
                assert_eq!(h.send(Command::Shutdown).await.code, 0);
                assert_eq!(restart.await.unwrap().code, 1);
            },
        );
        // One start, the restart's stop, and no second dockerd started only to be stopped again.
        assert_eq!(seen, ["prepare", "spawn", "stop"]);
    }

    #[test]
    fn a_dying_daemon_is_restarted_with_back_off() {
        let seen = drive(
            |f| f.ready_after = Duration::from_millis(100),
            |h, _| async move {
                assert_eq!(h.send(Command::Start).await.code, 0);
                let State::Running(pid) = h.state() else { panic!("not running: {:?}", h.state()) };
                // SAFETY: killing the fake's own `sleep` child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                tokio::time::sleep(Duration::from_millis(600)).await;
                assert!(matches!(h.state(), State::Waiting(ref w) if w.starts_with("dockerd exited")), "{:?}", h.state());
                // backoff(1) = 1 s, then a new process that answers.
                tokio::time::sleep(Duration::from_millis(2600)).await;
                assert!(matches!(h.state(), State::Running(p) if p != pid), "{:?}", h.state());
                assert_eq!(h.send(Command::Shutdown).await.code, 0);
            },
        );
        assert_eq!(seen, ["prepare", "spawn", "prepare", "spawn", "stop"]);
    }

    #[test]
    fn a_failed_spawn_is_reported_to_the_caller() {
        drive(
            |f| f.fail_spawn = true,
            |h, _| async move {
                let r = h.send(Command::Start).await;
                assert_eq!((r.code, r.text.as_str()), (1, "ERROR: no such binary"));
                assert_eq!(h.send(Command::Stop).await.text, "docker was not running");
                assert_eq!(h.state(), State::Stopped);
            },
        );
    }
}
