//! Which [`FakeHost`] the `host` functions reach on this thread.

use core::cell::RefCell;

use super::FakeHost;

thread_local! {
    // Per thread, because the test harness runs tests on many threads and
    // each test brings its own fake.
    static INSTALLED: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

/// Keeps a [`FakeHost`] installed on this thread; dropping it puts back
/// the fake that was installed before (guards nest).
#[derive(Debug)]
#[must_use = "the fake is uninstalled as soon as this guard is dropped"]
pub struct Installed {
    previous: Option<FakeHost>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        INSTALLED.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// Makes `host` the installed fake until the guard is dropped.
pub(crate) fn install(host: FakeHost) -> Installed {
    let previous = INSTALLED.with(|slot| slot.borrow_mut().replace(host));
    Installed { previous }
}

/// Runs `f` on the installed fake, for the host import named `import`.
///
/// # Panics
///
/// If no fake is installed on this thread.
pub(crate) fn with<R>(import: &str, f: impl FnOnce(&FakeHost) -> R) -> R {
    // A handle is cloned out so that no borrow of the slot is held while
    // `f` runs (it may install another fake).
    let host = INSTALLED.with(|slot| slot.borrow().clone());
    match host {
        Some(host) => f(&host),
        None => panic!(
            "host::{import} called with no fake host installed: host calls only work \
             inside wasmvisor. In a native test, install a \
             `wasmvisor_policy_sdk::testing::FakeHost` (`FakeHost::install` or \
             `FakeHost::run`), or drive the policy through `testing::Harness`"
        ),
    }
}
