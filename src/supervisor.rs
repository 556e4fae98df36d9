//! Foreground sandboxes: `msb up` boots them and follows their output until they exit or a signal
//! stops them; with `--watch` it also reloads the Sandboxfile when it or a file it names changes,
//! builds only the steps whose keys changed, and restarts only the sandboxes whose boot changed.
//!
//! One loop owns every decision: file changes, signals and sandbox exits arrive on one channel,
//! so no two restarts ever race. Each running sandbox has one thread that streams its output and
//! reports its exit.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use indexmap::IndexMap;
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::Error;
use crate::manifest::{Manifest, SandboxConfig};
use crate::plan::SandboxPlan;
use crate::project::Project;
use crate::runtime::{DEFAULT_STOP_TIMEOUT, RuntimeError, Sandboxes};
use crate::sandbox;
use crate::store::{PullOptions, Store};
use crate::watch::{self, Change, WatchSet};

/// How long the file watcher holds an event to merge it with the next ones on the same path.
const DEBOUNCE: Duration = Duration::from_millis(40);
/// After a relevant change, how long the files must stay quiet before msb acts: a burst of saves
/// (a formatter, a `git checkout`) gives one re-run after it, not one per write.
const QUIET: Duration = Duration::from_millis(80);

/// What `msb up` in the foreground does.
pub struct Options {
    /// Sandboxes to run; all of the Sandboxfile's when empty.
    pub names: Vec<String>,
    pub pull: PullOptions,
    /// Reload and re-run on changes.
    pub watch: bool,
    /// Only the sandboxes' output, without plans and names before each line (`msb run`).
    pub raw: bool,
}

/// Where the supervisor speaks: status lines, errors (an invalid edit's diagnostics), and a
/// writer for the sandboxes' output lines (one per sandbox thread).
pub struct Hooks {
    pub say: Box<dyn Fn(&str)>,
    pub error: Box<dyn Fn(Error)>,
    pub output: Arc<dyn Fn() -> Box<dyn Write + Send> + Send + Sync>,
}

enum Event {
    Files(Vec<PathBuf>),
    WatchFailed(String),
    Signal,
    Exited { name: String, generation: u64, result: Result<Option<i32>, RuntimeError> },
}

/// One sandbox the supervisor started.
struct Live {
    digest: String,
    generation: u64,
    waiter: Option<JoinHandle<()>>,
    /// Its last exit code, once it has exited on its own.
    exit_code: Option<i32>,
}

/// Runs the sandboxes of `manifest` in the foreground (with `watch`, reloading it from its path).
/// Returns the exit code: 130 when a signal stopped them; else the first failing sandbox's code,
/// or 0.
pub fn run(manifest: Manifest, store: &Store, options: Options, hooks: Hooks) -> Result<i32, Error> {
    let sandboxes = Sandboxes::new(store.root());
    let agent = sandbox::agent_binary()?;
    let (events, inbox) = mpsc::channel();
    let mut supervisor = Supervisor {
        store,
        sandboxes,
        agent,
        options,
        hooks,
        events: events.clone(),
        live: IndexMap::new(),
        generation: 0,
        planned: Vec::new(),
        said_runtime: false,
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|cause| RuntimeError::Io { op: "watch signals of", path: "msb".into(), cause })?;
    let signal_handle = signals.handle();
    let signal_events = events.clone();
    let signal_thread = thread::spawn(move || {
        for _ in signals.forever() {
            if signal_events.send(Event::Signal).is_err() {
                return;
            }
        }
    });
    let result = supervisor.apply(&manifest).and_then(|()| supervisor.serve(manifest, &inbox));
    supervisor.stop_all(&inbox);
    signal_handle.close();
    let _ = signal_thread.join();
    result
}

struct Supervisor<'a> {
    store: &'a Store,
    sandboxes: Sandboxes,
    agent: PathBuf,
    options: Options,
    hooks: Hooks,
    events: Sender<Event>,
    live: IndexMap<String, Live>,
    generation: u64,
    /// The configs and plans of what runs, to say what an edit changes.
    planned: Vec<(SandboxConfig, SandboxPlan)>,
    said_runtime: bool,
}

impl Supervisor<'_> {
    fn serve(&mut self, mut manifest: Manifest, inbox: &Receiver<Event>) -> Result<i32, Error> {
        // Without `--watch`, no watch set either: building one compiles its ignore patterns and
        // walks `dir:` images, for nothing.
        let mut watch = if self.options.watch {
            let mut watcher = self.watcher()?;
            let set = WatchSet::of(&manifest);
            let watched = rewatch(&mut watcher, &[], &set);
            (self.hooks.say)(&format!("watching {} paths for changes; Ctrl-C stops", set.folders().len()));
            Some((watcher, set, watched))
        } else {
            None
        };
        loop {
            if watch.is_none() && self.live.values().all(|l| l.waiter.is_none()) {
                return Ok(self.exit_code());
            }
            let Ok(event) = inbox.recv() else { return Ok(self.exit_code()) };
            match event {
                Event::Signal => return Ok(130),
                Event::WatchFailed(message) => (self.hooks.say)(&format!("watch: {message}")),
                Event::Exited { name, generation, result } => self.exited(&name, generation, result),
                Event::Files(paths) => {
                    let Some((watcher, set, watched)) = watch.as_mut() else { continue };
                    if paths.is_empty() || !paths.iter().any(|p| set.matters(p)) {
                        continue;
                    }
                    if self.settle(inbox, set) {
                        return Ok(130);
                    }
                    match crate::manifest::load_remembered(&manifest.path, self.store) {
                        Ok(edited) => {
                            manifest = edited;
                            if let Err(err) = self.apply(&manifest) {
                                (self.hooks.error)(err);
                                (self.hooks.say)("the build failed: the sandboxes keep running as they were");
                            }
                        }
                        Err(err) => {
                            (self.hooks.error)(err.into());
                            (self.hooks.say)("the Sandboxfile is invalid: the sandboxes keep running as they were");
                        }
                    }
                    *set = WatchSet::of(&manifest);
                    *watched = rewatch(watcher, watched, set);
                }
            }
        }
    }

    /// Waits until no change that matters arrives for [`QUIET`] (others, such as msb's own
    /// output redirected into the project, do not count); sandbox exits are handled meanwhile.
    /// True when a signal arrived.
    fn settle(&mut self, inbox: &Receiver<Event>, set: &WatchSet) -> bool {
        let mut quiet_since = std::time::Instant::now();
        loop {
            let left = QUIET.saturating_sub(quiet_since.elapsed());
            match inbox.recv_timeout(left) {
                Ok(Event::Files(paths)) => {
                    if paths.iter().any(|p| set.matters(p)) {
                        quiet_since = std::time::Instant::now();
                    }
                }
                Ok(Event::Signal) => return true,
                Ok(Event::WatchFailed(message)) => (self.hooks.say)(&format!("watch: {message}")),
                Ok(Event::Exited { name, generation, result }) => self.exited(&name, generation, result),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn watcher(&self) -> Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>, Error> {
        let events = self.events.clone();
        new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            let event = match result {
                // Reads are not changes (and msb itself reads every watched file when it reloads).
                Ok(batch) => Event::Files(
                    batch.into_iter().filter(|e| !matches!(e.event.kind, notify::EventKind::Access(_))).flat_map(|e| e.event.paths).collect(),
                ),
                Err(errors) => Event::WatchFailed(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
            };
            let _ = events.send(event);
        })
        .map_err(|err| RuntimeError::Io { op: "watch", path: "the Sandboxfile's files".into(), cause: std::io::Error::other(err) }.into())
    }

    /// Builds what changed and brings the running set in line with `manifest`: sandboxes whose
    /// boot spec changed (or that are new) start, removed ones stop, the others are left alone.
    fn apply(&mut self, manifest: &Manifest) -> Result<(), Error> {
        let project = Project { manifest, store: self.store };
        let mut shown: Vec<SandboxPlan> = Vec::new();
        let built = project.build(&self.options.names, &self.options.pull, &mut |plan| shown.push(plan.clone()))?;
        let after: Vec<(SandboxConfig, SandboxPlan)> =
            built.iter().map(|b| (manifest.file.sandbox[&b.name].clone(), b.plan.clone())).collect();
        let first = self.planned.is_empty() && self.live.is_empty();
        let mut why: IndexMap<String, String> = IndexMap::new();
        for change in watch::changes(&self.planned, &after) {
            match change {
                Change::Start(name) => why.insert(name.clone(), format!("{name} added → starting it")),
                Change::Stop(name) => why.insert(name.clone(), format!("{name} removed → stopping it")),
                Change::Restart { name, why: reason } => why.insert(name.clone(), format!("{reason}, restarting {name}")),
            };
        }
        let mut to_start = Vec::new();
        for built in &built {
            let name = built.name.as_str().to_owned();
            let config = &manifest.file.sandbox[&built.name];
            let spec = sandbox::boot_spec(manifest, config, built, &self.agent)?;
            if self.live.get(&name).is_some_and(|live| live.digest == spec.digest()) {
                continue;
            }
            if !first && !self.options.raw {
                let line = why.shift_remove(&name).unwrap_or_else(|| format!("scripts changed (no layer rebuilt), restarting {name}"));
                (self.hooks.say)(&line);
            }
            to_start.push((config.clone(), spec));
        }
        for plan in shown.iter().filter(|p| !self.options.raw && (first || to_start.iter().any(|(_, s)| s.name == p.name))) {
            (self.hooks.say)(plan.to_string().trim_end());
        }
        let gone: Vec<String> = self.live.keys().filter(|n| !built.iter().any(|b| b.name.as_str() == n.as_str())).cloned().collect();
        for name in gone {
            if let Some(line) = why.shift_remove(&name) {
                (self.hooks.say)(&line);
            }
            self.stop(&name);
            self.live.shift_remove(&name);
        }
        let width = built.iter().map(|b| b.name.as_str().len()).max().unwrap_or(0);
        for (config, spec) in to_start {
            self.stop(&spec.name);
            self.start(manifest, &config, &spec, width)?;
        }
        self.planned = after;
        Ok(())
    }

    fn start(&mut self, manifest: &Manifest, config: &SandboxConfig, spec: &crate::runtime::SandboxSpec, width: usize) -> Result<(), Error> {
        let (running, choice) = sandbox::start(&self.sandboxes, manifest, config, spec, false)?;
        if config.runtime == crate::manifest::Runtime::Auto && !self.said_runtime && !self.options.raw {
            (self.hooks.say)(&format!("runtime {}", choice.reason));
            self.said_runtime = true;
        }
        self.generation += 1;
        let generation = self.generation;
        let name = spec.name.clone();
        let prefix = if self.options.raw { String::new() } else { format!("{name:width$} | ") };
        let (events, output) = (self.events.clone(), self.hooks.output.clone());
        let thread_name = name.clone();
        let waiter = thread::spawn(move || {
            let mut out = output();
            let result = running.wait(Some(&mut out), &prefix);
            let _ = events.send(Event::Exited { name: thread_name, generation, result });
        });
        self.live.insert(name, Live { digest: spec.digest(), generation, waiter: Some(waiter), exit_code: None });
        Ok(())
    }

    /// Stops `name` if the supervisor runs it, and waits for its output thread.
    fn stop(&mut self, name: &str) {
        let Some(live) = self.live.get_mut(name) else { return };
        let Some(waiter) = live.waiter.take() else { return };
        if let Err(err) = self.sandboxes.stop(name, DEFAULT_STOP_TIMEOUT) {
            (self.hooks.say)(&format!("{name}: {err}"));
        }
        let _ = waiter.join();
    }

    /// Stops every running sandbox with its init's signal, in parallel (each may wait for its
    /// init's poweroff); a second signal meanwhile kills them.
    fn stop_all(&mut self, inbox: &Receiver<Event>) {
        let names: Vec<String> = self.live.iter().filter(|(_, l)| l.waiter.is_some()).map(|(n, _)| n.clone()).collect();
        if names.is_empty() {
            return;
        }
        (self.hooks.say)(&format!("stopping {}", names.join(", ")));
        let sandboxes = &self.sandboxes;
        thread::scope(|scope| {
            let stops: Vec<_> = names.iter().map(|name| scope.spawn(move || sandboxes.stop(name, DEFAULT_STOP_TIMEOUT))).collect();
            while !stops.iter().all(|s| s.is_finished()) {
                if let Ok(Event::Signal) = inbox.recv_timeout(Duration::from_millis(50)) {
                    (self.hooks.say)(&format!("killing {}", names.join(", ")));
                    for name in &names {
                        let _ = sandboxes.kill(name);
                    }
                }
            }
        });
        for live in self.live.values_mut() {
            if let Some(waiter) = live.waiter.take() {
                let _ = waiter.join();
            }
        }
    }

    fn exited(&mut self, name: &str, generation: u64, result: Result<Option<i32>, RuntimeError>) {
        let Some(live) = self.live.get_mut(name).filter(|l| l.generation == generation) else { return };
        if let Some(waiter) = live.waiter.take() {
            let _ = waiter.join();
        }
        match result {
            Ok(code) => {
                live.exit_code = code;
                if self.options.watch {
                    (self.hooks.say)(&format!("{name} exited with code {}; waiting for changes", code.unwrap_or(0)));
                }
            }
            Err(err) => {
                live.exit_code = Some(1);
                (self.hooks.error)(Error::from(err));
            }
        }
    }

    /// One sandbox: its exit code, as a shell gives a command's; several: the first failure's.
    fn exit_code(&self) -> i32 {
        self.live.values().filter_map(|l| l.exit_code).find(|c| *c != 0).unwrap_or(0)
    }
}

/// Moves the watcher from the folders `before` to the watch set's; returns what is watched.
fn rewatch(watcher: &mut Debouncer<notify::RecommendedWatcher, RecommendedCache>, before: &[(PathBuf, bool)], set: &WatchSet) -> Vec<(PathBuf, bool)> {
    let after = set.folders();
    for old in before.iter().filter(|f| !after.contains(f)) {
        let _ = watcher.unwatch(&old.0);
    }
    for (folder, recursive) in after.iter().filter(|f| !before.contains(f)) {
        let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        let _ = watcher.watch(folder, mode);
    }
    after
}
