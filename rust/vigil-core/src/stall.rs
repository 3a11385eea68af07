// SPDX-License-Identifier: GPL-2.0-or-later

//! vCPU stall detector: register decode and per-vCPU countdown.
//!
//! Guest ABI (Linux `drivers/misc/vcpu_stall_detector.c`): one 0x10-byte
//! bank per vCPU, bank `i` at `i * 0x10` belonging to CPU index `i`, with
//! 32-bit registers STATUS (0x0), `LOAD_CNT` (0x4), `CURRENT_CNT` (0x8) and
//! `CLOCK_FREQ_HZ` (0xc). The guest programs the tick rate, loads a tick
//! count, enables the bank, and then reloads `LOAD_CNT` (the "pet") before
//! the count runs out.
//!
//! Time is measured in nanoseconds of a *time source* chosen by the shell:
//! the vCPU thread's CPU time (so that only time the vCPU really ran counts)
//! or QEMU's virtual clock. A countdown remembers the source's reading when
//! it started and its budget; it never needs a periodic tick. The shell arms
//! one host timer per bank for [`Bank`]'s suggested delay, which is never
//! earlier than the budget could possibly run out, because a vCPU cannot run
//! for longer than the wall-clock time that passes.

use std::fmt;

/// Size of one vCPU's register bank.
pub const BANK_SIZE: u64 = 0x10;
/// Shortest host timer the device ever arms: no guest-written clock rate or
/// count can make the device wake the host more often than this, per bank.
pub const MIN_TIMER_NS: u64 = 1_000_000;
/// While a vCPU runs slower than wall-clock time, re-arming for exactly the
/// remaining budget would wake the host ever more often as the remainder
/// shrinks. Re-arms are therefore at least `budget / REARM_DIVISOR` apart
/// (a detection may come that much late, never early).
pub const REARM_DIVISOR: u64 = 64;
/// STATUS bit 0 enables the bank; other bits are reserved.
pub const STATUS_ENABLE: u32 = 1;

const NS_PER_SEC: u128 = 1_000_000_000;

/// Linux's driver accepts these `clock-frequency` and `timeout-sec` device
/// tree values (outside them it warns and uses its own defaults).
pub const DT_CLOCK_HZ: std::ops::RangeInclusive<u32> = 1..=99;
pub const DT_TIMEOUT_SEC: std::ops::RangeInclusive<u32> = 1..=599;
/// PPIs are numbered 0..15 in the device tree (INTIDs 16..31).
pub const PPIS: std::ops::Range<i32> = 0..16;

/// Checks the device's configuration: what it tells the guest in the
/// device tree, and its interrupt. Errors name the property.
pub fn validate_config(clock_hz: u32, timeout_sec: u32, ppi: i32) -> Result<(), String> {
    if !DT_CLOCK_HZ.contains(&clock_hz) {
        return Err(format!(
            "property 'clock-frequency' must be {}..{} Hz (got {clock_hz}), the range Linux's \
             driver accepts",
            DT_CLOCK_HZ.start(),
            DT_CLOCK_HZ.end()
        ));
    }
    if !DT_TIMEOUT_SEC.contains(&timeout_sec) {
        return Err(format!(
            "property 'timeout-sec' must be {}..{} (got {timeout_sec}), the range Linux's driver \
             accepts",
            DT_TIMEOUT_SEC.start(),
            DT_TIMEOUT_SEC.end()
        ));
    }
    if ppi != -1 && !PPIS.contains(&ppi) {
        return Err(format!(
            "property 'ppi' must be a PPI number 0..15, or -1 for none (got {ppi})"
        ));
    }
    Ok(())
}

/// The four registers of a bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Status,
    LoadCnt,
    CurrentCnt,
    ClockFreqHz,
}

impl Register {
    /// The register's name in the guest ABI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Register::Status => "STATUS",
            Register::LoadCnt => "LOAD_CNT",
            Register::CurrentCnt => "CURRENT_CNT",
            Register::ClockFreqHz => "CLOCK_FREQ_HZ",
        }
    }
}

/// Why a guest access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// Only 32-bit accesses are defined.
    Size(u32),
    /// The offset is not 32-bit aligned.
    Misaligned(u64),
    /// The offset is past the last bank.
    Beyond(u64),
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::Size(s) => write!(f, "{s}-byte access (registers are 32-bit)"),
            AccessError::Misaligned(o) => write!(f, "misaligned offset {o:#x}"),
            AccessError::Beyond(o) => write!(f, "offset {o:#x} is past the last bank"),
        }
    }
}

/// Decodes an access at `offset` of `size` bytes into (bank, register).
pub fn decode(offset: u64, size: u32, banks: u32) -> Result<(u32, Register), AccessError> {
    if size != 4 {
        return Err(AccessError::Size(size));
    }
    if offset & 3 != 0 {
        return Err(AccessError::Misaligned(offset));
    }
    let bank = offset / BANK_SIZE;
    if bank >= u64::from(banks) {
        return Err(AccessError::Beyond(offset));
    }
    let reg = match offset % BANK_SIZE {
        0x0 => Register::Status,
        0x4 => Register::LoadCnt,
        0x8 => Register::CurrentCnt,
        _ => Register::ClockFreqHz,
    };
    // bank < banks <= u32::MAX
    Ok((bank as u32, reg))
}

/// A guest write that was accepted only in part, or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// `CURRENT_CNT` is read-only; the write was ignored.
    ReadOnly(Register),
    /// The bank was told to count while `CLOCK_FREQ_HZ` is 0; it stays idle.
    NoClock,
    /// `CLOCK_FREQ_HZ` was set to 0 (stored; the bank cannot count with it).
    ZeroClock,
    /// STATUS was written with reserved bits set (bit 0 still applies).
    ReservedStatusBits(u32),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestError::ReadOnly(r) => write!(f, "write to read-only {}", r.name()),
            GuestError::NoClock => write!(f, "enabled with CLOCK_FREQ_HZ 0, bank stays idle"),
            GuestError::ZeroClock => write!(f, "CLOCK_FREQ_HZ set to 0"),
            GuestError::ReservedStatusBits(b) => write!(f, "reserved STATUS bits {b:#x}"),
        }
    }
}

/// What the shell must do with the bank's host timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Leave it as it is.
    Keep,
    /// (Re)arm it to fire after this many ns.
    Arm(u64),
    /// Cancel it.
    Cancel,
}

/// The outcome of a guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub timer: Timer,
    /// The write re-armed or stopped the bank: a raised interrupt is lowered.
    pub lower_irq: bool,
    /// Something worth a guest-error log line.
    pub error: Option<GuestError>,
}

/// How a countdown's budget running out is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Take the action at the first expiry. By default the first expiry
    /// warns (event and interrupt) and the action comes if the guest still
    /// has not reloaded the bank after one more budget.
    pub immediate_action: bool,
}

/// What the shell must do when the bank's timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// The bank is not counting (a stale timer): nothing to do.
    Idle,
    /// The budget is not used up yet: arm the timer again after this many ns.
    Wait(u64),
    /// The budget ran out: report the stall and raise the vCPU's interrupt.
    /// With `act`, take the configured action too. With `rearm`, arm the
    /// timer again (for the grace budget before the action).
    Expired { act: bool, rearm: Option<u64> },
}

/// Where a bank is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Not counting: disabled, never loaded, or disabled by a missing clock.
    #[default]
    Idle = 0,
    /// Counting down the budget.
    Counting = 1,
    /// The budget ran out once; counting down the grace budget.
    Warned = 2,
    /// The action was taken; waits for the guest to reload or re-enable.
    Fired = 3,
}

impl Stage {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Stage> {
        match v {
            0 => Some(Stage::Idle),
            1 => Some(Stage::Counting),
            2 => Some(Stage::Warned),
            3 => Some(Stage::Fired),
            _ => None,
        }
    }

    const fn counting(self) -> bool {
        matches!(self, Stage::Counting | Stage::Warned)
    }

    /// The budget ran out and the guest has not reloaded or disabled the
    /// bank since: the vCPU is (still) stalled.
    #[must_use]
    pub const fn stalled(self) -> bool {
        matches!(self, Stage::Warned | Stage::Fired)
    }
}

/// Converts `ticks` at `hz` to nanoseconds (saturating; `hz` must not be 0).
#[must_use]
pub fn ticks_to_ns(ticks: u32, hz: u32) -> u64 {
    debug_assert!(hz != 0);
    let ns = u128::from(ticks) * NS_PER_SEC / u128::from(hz.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Converts `ns` to whole ticks at `hz`, rounding up (saturating at u32).
#[must_use]
pub fn ns_to_ticks(ns: u64, hz: u32) -> u32 {
    let ticks = (u128::from(ns) * u128::from(hz)).div_ceil(NS_PER_SEC);
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// One vCPU's bank: the guest-visible registers and the countdown.
///
/// Every field is a plain integer so that the shell can migrate it as is.
/// `start_ns` is a reading of the bank's time source, meaningful only in the
/// process that took it: see [`Bank::rebase`] and [`Bank::resume`], which
/// move the time used so far into `used_ns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bank {
    pub status: u32,
    pub load_cnt: u32,
    pub clock_hz: u32,
    /// A [`Stage`] as u8.
    pub stage: u8,
    /// The budget of the running countdown, in ns of the time source.
    pub budget_ns: u64,
    /// The time source's reading when the countdown (re)started or resumed.
    pub start_ns: u64,
    /// Budget used before `start_ns` (carried across migration).
    pub used_ns: u64,
    /// How many times a budget ran out (operator statistics).
    pub stalls: u32,
    /// The vCPU whose run time the countdown consumes: the one that last
    /// enabled or reloaded the bank (see [`Owners`]). Meaningful only while
    /// the bank is not idle.
    pub owner: u32,
}

impl Bank {
    #[must_use]
    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage).unwrap_or_default()
    }

    #[must_use]
    pub fn enabled(&self) -> bool {
        self.status & STATUS_ENABLE != 0
    }

    /// The budget left at `now` (0 when not counting).
    #[must_use]
    pub fn remaining_ns(&self, now: u64) -> u64 {
        if !self.stage().counting() {
            return 0;
        }
        let used = self
            .used_ns
            .saturating_add(now.saturating_sub(self.start_ns));
        self.budget_ns.saturating_sub(used)
    }

    /// The host timer delay for `remaining` ns left of the current budget.
    fn timer_delay(&self, remaining: u64) -> u64 {
        remaining
            .max(MIN_TIMER_NS)
            .max(self.budget_ns / REARM_DIVISOR)
    }

    /// Starts a countdown of `LOAD_CNT` ticks, if the bank is enabled and has a
    /// clock.
    fn start(&mut self, owner: u32, now: u64) -> (Timer, Option<GuestError>) {
        if !self.enabled() {
            self.stage = Stage::Idle as u8;
            return (Timer::Cancel, None);
        }
        if self.clock_hz == 0 {
            self.stage = Stage::Idle as u8;
            return (Timer::Cancel, Some(GuestError::NoClock));
        }
        self.budget_ns = ticks_to_ns(self.load_cnt, self.clock_hz);
        self.owner = owner;
        self.start_ns = now;
        self.used_ns = 0;
        self.stage = Stage::Counting as u8;
        (Timer::Arm(self.timer_delay(self.budget_ns)), None)
    }

    /// A guest write of `value` to `reg` by vCPU 0, at time-source reading
    /// `now`.
    pub fn write(&mut self, reg: Register, value: u32, now: u64) -> WriteOutcome {
        self.write_with(reg, value, 0, || now)
    }

    /// A guest write of `value` to `reg`. A write that (re)starts the
    /// countdown makes `owner` the bank's owner, and `now` must read that
    /// vCPU's time source; it is called only if the write needs it (a
    /// vCPU's CPU-time clock costs a system call to read).
    pub fn write_with(
        &mut self,
        reg: Register,
        value: u32,
        owner: u32,
        now: impl FnOnce() -> u64,
    ) -> WriteOutcome {
        let keep = WriteOutcome {
            timer: Timer::Keep,
            lower_irq: false,
            error: None,
        };
        match reg {
            Register::Status => {
                self.status = value;
                let reserved = value & !STATUS_ENABLE;
                let (timer, error) = self.start(owner, now());
                WriteOutcome {
                    timer,
                    lower_irq: true,
                    error: error.or_else(|| {
                        (reserved != 0).then_some(GuestError::ReservedStatusBits(reserved))
                    }),
                }
            }
            Register::LoadCnt => {
                self.load_cnt = value;
                if !self.enabled() {
                    return keep;
                }
                let (timer, error) = self.start(owner, now());
                WriteOutcome {
                    timer,
                    lower_irq: true,
                    error,
                }
            }
            Register::CurrentCnt => WriteOutcome {
                error: Some(GuestError::ReadOnly(reg)),
                ..keep
            },
            Register::ClockFreqHz => {
                // Applies from the next load: a running countdown keeps its budget.
                self.clock_hz = value;
                WriteOutcome {
                    error: (value == 0).then_some(GuestError::ZeroClock),
                    ..keep
                }
            }
        }
    }

    /// Whether a write of `reg` (re)starts the countdown of an enabled bank,
    /// or disables it: the writes that decide the bank's owner.
    #[must_use]
    pub fn claims(&self, reg: Register) -> bool {
        match reg {
            Register::Status => true,
            Register::LoadCnt => self.enabled(),
            Register::CurrentCnt | Register::ClockFreqHz => false,
        }
    }

    /// Retires the bank because its owner started counting another bank
    /// (see [`Owners`]): it is disabled as if the guest had written STATUS 0.
    pub fn retire(&mut self) -> WriteOutcome {
        self.status &= !STATUS_ENABLE;
        self.stage = Stage::Idle as u8;
        WriteOutcome {
            timer: Timer::Cancel,
            lower_irq: true,
            error: None,
        }
    }

    /// A guest read of `reg` at time-source reading `now`.
    #[must_use]
    pub fn read(&self, reg: Register, now: u64) -> u32 {
        match reg {
            Register::Status => self.status,
            Register::LoadCnt => self.load_cnt,
            Register::CurrentCnt => ns_to_ticks(self.remaining_ns(now), self.clock_hz),
            Register::ClockFreqHz => self.clock_hz,
        }
    }

    /// The bank's host timer fired; `now` is the time source's reading.
    pub fn deadline(&mut self, now: u64, policy: Policy) -> Deadline {
        let stage = self.stage();
        if !stage.counting() {
            return Deadline::Idle;
        }
        let remaining = self.remaining_ns(now);
        if remaining > 0 {
            return Deadline::Wait(self.timer_delay(remaining));
        }
        self.stalls = self.stalls.saturating_add(1);
        if stage == Stage::Counting && !policy.immediate_action {
            self.stage = Stage::Warned as u8;
            self.start_ns = now;
            self.used_ns = 0;
            return Deadline::Expired {
                act: false,
                rearm: Some(self.timer_delay(self.budget_ns)),
            };
        }
        self.stage = Stage::Fired as u8;
        Deadline::Expired {
            act: true,
            rearm: None,
        }
    }

    /// Moves the time used so far into `used_ns`, so that the countdown no
    /// longer depends on `start_ns` (before migration or a snapshot).
    pub fn rebase(&mut self, now: u64) {
        if self.stage().counting() {
            self.used_ns = self.budget_ns - self.remaining_ns(now);
            self.start_ns = now;
        }
    }

    /// Continues a countdown in a new time source (after migration or a
    /// snapshot load): the remaining budget is kept, neither refilled nor
    /// expired. Returns what to do with the host timer.
    pub fn resume(&mut self, now: u64) -> Timer {
        if Stage::from_u8(self.stage).is_none() {
            self.stage = Stage::Idle as u8;
        }
        if !self.stage().counting() {
            return Timer::Cancel;
        }
        self.start_ns = now;
        Timer::Arm(self.timer_delay(self.remaining_ns(now)))
    }
}

/// Which bank each vCPU's run time is counted for.
///
/// A bank counts the time of the vCPU that last enabled or reloaded it, not
/// of the vCPU with its index: a crash kernel started by kdump numbers its
/// CPUs anew (its CPU 0 is whichever vCPU panicked) and pets bank 0 from that
/// vCPU. A vCPU counts for one bank at a time: when it starts petting another
/// bank, the one it counted for until then is retired (disabled), because the
/// kernel that armed it is gone and can never pet it again.
///
/// Accesses that do not come from a vCPU (qtest, the monitor) count as
/// coming from the bank's own vCPU, which is also what a guest that never
/// renumbers its CPUs (Linux's driver pets bank N from CPU N) gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    bank_of: Vec<Option<u32>>,
}

impl Owners {
    /// No vCPU counts for any bank yet.
    #[must_use]
    pub fn new(vcpus: u32) -> Self {
        Owners {
            bank_of: vec![None; vcpus as usize],
        }
    }

    /// The bank vCPU `vcpu` counts for, if any.
    #[must_use]
    pub fn bank_of(&self, vcpu: u32) -> Option<u32> {
        self.bank_of.get(vcpu as usize).copied().flatten()
    }

    fn set(&mut self, vcpu: u32, bank: Option<u32>) {
        if let Some(slot) = self.bank_of.get_mut(vcpu as usize) {
            *slot = bank;
        }
    }

    /// vCPU `owner` (re)started bank `bank`, which vCPU `prev` counted for
    /// until now (`None` if the bank was idle). Returns the bank to retire:
    /// the other one `owner` counted for until now, if any.
    pub fn claim(&mut self, bank: u32, owner: u32, prev: Option<u32>) -> Option<u32> {
        if let Some(p) = prev {
            if p != owner && self.bank_of(p) == Some(bank) {
                self.set(p, None);
            }
        }
        let old = self.bank_of(owner);
        self.set(owner, Some(bank));
        old.filter(|&b| b != bank)
    }

    /// Bank `bank`, counted for `owner`, went idle (disabled, retired, or
    /// stopped for want of a clock).
    pub fn release(&mut self, bank: u32, owner: u32) {
        if self.bank_of(owner) == Some(bank) {
            self.set(owner, None);
        }
    }

    /// Rebuilds the map from the banks (after migration): every bank that
    /// is not idle counts for its owner.
    pub fn rebuild<'a>(&mut self, banks: impl IntoIterator<Item = &'a Bank>) {
        self.bank_of.iter_mut().for_each(|b| *b = None);
        for (i, b) in banks.into_iter().enumerate() {
            if b.stage() != Stage::Idle {
                // i < number of banks <= u32::MAX
                self.set(b.owner, Some(i as u32));
            }
        }
    }
}

/// How an expiry is reported: the `stage` of the `VCPU_STALL` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// First expiry: event and interrupt; the action waits one more budget.
    Warning,
    /// The watchdog action is taken now.
    Action,
    /// The action is due, but was already taken in this stall episode: the
    /// vCPU is reported, nothing else happens.
    Ongoing,
}

/// Actions are at least this far apart (ns of QEMU's virtual clock), even
/// across episodes: a guest that stalls and recovers in a loop (it controls
/// the budget, down to [`MIN_TIMER_NS`]) cannot make the host reset, pause
/// or print more than once a second.
pub const MIN_ACTION_INTERVAL_NS: u64 = 1_000_000_000;

/// One hang, one action.
///
/// A hang rarely stays on one vCPU: the lock holder stalls, then its
/// waiters. A stall *episode* begins when the watchdog action is taken and
/// lasts while any bank is stalled ([`Stage::stalled`]: its budget ran out
/// and the guest neither reloaded nor disabled it since), or until the
/// machine is reset. Within an episode further expiries are still reported
/// (every stalled vCPU gets its event), but the action is not taken again:
/// a management tool that dumps and resumes after a pause gets one dump
/// per hang, not one per stalled vCPU. An action due less than
/// [`MIN_ACTION_INTERVAL_NS`] after the last one is reported as ongoing too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Episode {
    /// The action was taken and the episode has not ended yet.
    pub acted: bool,
    /// When the last action was taken (virtual clock), if ever: plus one,
    /// so that 0 means never.
    pub last_action: u64,
}

impl Episode {
    /// A bank's budget ran out at virtual time `now`; `act` is
    /// [`Deadline::Expired`]'s.
    pub fn report(&mut self, act: bool, now: u64) -> Report {
        if !act {
            return Report::Warning;
        }
        let too_soon = self.last_action != 0
            && now.saturating_sub(self.last_action - 1) < MIN_ACTION_INTERVAL_NS;
        if self.acted || too_soon {
            return Report::Ongoing;
        }
        self.acted = true;
        self.last_action = now.saturating_add(1);
        Report::Action
    }

    /// Called when a bank stopped being stalled, with whether any bank
    /// still is. Returns `true` if that ended the episode.
    pub fn settle(&mut self, any_stalled: bool) -> bool {
        let ended = self.acted && !any_stalled;
        if ended {
            self.acted = false;
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn armed(hz: u32, ticks: u32, now: u64) -> Bank {
        let mut b = Bank::default();
        b.write(Register::ClockFreqHz, hz, now);
        b.write(Register::LoadCnt, ticks, now);
        let o = b.write(Register::Status, 1, now);
        assert_eq!(o.error, None);
        b
    }

    #[test]
    fn config_is_checked_naming_the_property() {
        assert_eq!(validate_config(10, 8, 15), Ok(()));
        assert_eq!(validate_config(1, 599, -1), Ok(()));
        assert_eq!(validate_config(99, 1, 0), Ok(()));
        for (hz, t, ppi, prop) in [
            (0, 8, 15, "'clock-frequency'"),
            (100, 8, 15, "'clock-frequency'"),
            (10, 0, 15, "'timeout-sec'"),
            (10, 600, 15, "'timeout-sec'"),
            (10, 8, 16, "'ppi'"),
            (10, 8, -2, "'ppi'"),
        ] {
            let e = validate_config(hz, t, ppi).unwrap_err();
            assert!(e.contains(prop), "{e}");
        }
    }

    #[test]
    fn decode_banks_and_registers() {
        assert_eq!(decode(0x0, 4, 2), Ok((0, Register::Status)));
        assert_eq!(decode(0x4, 4, 2), Ok((0, Register::LoadCnt)));
        assert_eq!(decode(0x8, 4, 2), Ok((0, Register::CurrentCnt)));
        assert_eq!(decode(0xc, 4, 2), Ok((0, Register::ClockFreqHz)));
        assert_eq!(decode(0x1c, 4, 2), Ok((1, Register::ClockFreqHz)));
        assert_eq!(decode(0x20, 4, 2), Err(AccessError::Beyond(0x20)));
        assert_eq!(decode(0x2, 4, 2), Err(AccessError::Misaligned(2)));
        assert_eq!(decode(0x0, 1, 2), Err(AccessError::Size(1)));
        assert_eq!(decode(0x0, 8, 2), Err(AccessError::Size(8)));
        assert_eq!(
            decode(u64::MAX - 3, 4, u32::MAX),
            Err(AccessError::Beyond(u64::MAX - 3))
        );
        assert_eq!(decode(0, 4, 0), Err(AccessError::Beyond(0)));
    }

    #[test]
    fn conversions() {
        assert_eq!(ticks_to_ns(80, 10), 8 * S);
        assert_eq!(ticks_to_ns(u32::MAX, 1), u64::from(u32::MAX) * S);
        assert_eq!(ticks_to_ns(1, u32::MAX), 0);
        assert_eq!(ns_to_ticks(8 * S, 10), 80);
        assert_eq!(ns_to_ticks(1, 10), 1, "a partial tick still counts");
        assert_eq!(ns_to_ticks(u64::MAX, u32::MAX), u32::MAX);
        assert_eq!(ns_to_ticks(0, 10), 0);
    }

    #[test]
    fn driver_sequence_counts_down_and_reads_back() {
        let b = armed(10, 80, 100);
        assert_eq!(b.stage(), Stage::Counting);
        assert_eq!(b.read(Register::Status, 100), 1);
        assert_eq!(b.read(Register::LoadCnt, 100), 80);
        assert_eq!(b.read(Register::ClockFreqHz, 100), 10);
        assert_eq!(b.read(Register::CurrentCnt, 100), 80);
        assert_eq!(b.read(Register::CurrentCnt, 100 + 3 * S), 50);
        assert_eq!(b.read(Register::CurrentCnt, 100 + 9 * S), 0);
    }

    #[test]
    fn pet_rearms_for_the_full_budget_and_lowers_the_irq() {
        let mut b = armed(10, 80, 0);
        let o = b.write(Register::LoadCnt, 80, 4 * S);
        assert_eq!(o.timer, Timer::Arm(8 * S));
        assert!(o.lower_irq);
        assert_eq!(b.deadline(8 * S, Policy::default()), Deadline::Wait(4 * S));
        assert_eq!(b.remaining_ns(11 * S), S);
    }

    #[test]
    fn two_stage_policy_warns_then_acts() {
        let mut b = armed(10, 80, 0);
        let p = Policy::default();
        assert_eq!(
            b.deadline(8 * S, p),
            Deadline::Expired {
                act: false,
                rearm: Some(8 * S)
            }
        );
        assert_eq!(b.stage(), Stage::Warned);
        assert_eq!(b.deadline(12 * S, p), Deadline::Wait(4 * S));
        assert_eq!(
            b.deadline(16 * S, p),
            Deadline::Expired {
                act: true,
                rearm: None
            }
        );
        assert_eq!(b.stage(), Stage::Fired);
        assert_eq!(b.stalls, 2);
        assert_eq!(
            b.deadline(30 * S, p),
            Deadline::Idle,
            "no further expiries after the action"
        );
        // A pet after the action starts over.
        assert_eq!(
            b.write(Register::LoadCnt, 80, 31 * S).timer,
            Timer::Arm(8 * S)
        );
        assert_eq!(b.stage(), Stage::Counting);
    }

    #[test]
    fn pet_during_grace_cancels_the_action() {
        let mut b = armed(10, 80, 0);
        let p = Policy::default();
        assert!(matches!(
            b.deadline(8 * S, p),
            Deadline::Expired { act: false, .. }
        ));
        b.write(Register::LoadCnt, 80, 9 * S);
        assert_eq!(b.stage(), Stage::Counting);
        assert_eq!(b.deadline(16 * S, p), Deadline::Wait(S));
    }

    #[test]
    fn immediate_policy_acts_at_first_expiry() {
        let mut b = armed(10, 80, 0);
        let p = Policy {
            immediate_action: true,
        };
        assert_eq!(
            b.deadline(8 * S, p),
            Deadline::Expired {
                act: true,
                rearm: None
            }
        );
        assert_eq!(b.stalls, 1);
    }

    #[test]
    fn disable_stops_and_disabled_banks_never_fire() {
        let mut b = armed(10, 80, 0);
        let o = b.write(Register::Status, 0, S);
        assert_eq!(o.timer, Timer::Cancel);
        assert!(o.lower_irq);
        assert_eq!(b.deadline(100 * S, Policy::default()), Deadline::Idle);
        assert_eq!(b.read(Register::CurrentCnt, 100 * S), 0);
        // Loading a disabled bank only stores the value.
        let o = b.write(Register::LoadCnt, 5, 100 * S);
        assert_eq!(o.timer, Timer::Keep);
        assert_eq!(b.stage(), Stage::Idle);
    }

    #[test]
    fn hostile_values_are_survivable() {
        // Enable before any clock: logged, idle, no division by zero.
        let mut b = Bank::default();
        let o = b.write(Register::Status, 1, 0);
        assert_eq!(
            (o.timer, o.error),
            (Timer::Cancel, Some(GuestError::NoClock))
        );
        assert_eq!(b.read(Register::CurrentCnt, 5), 0);
        assert_eq!(
            b.write(Register::ClockFreqHz, 0, 0).error,
            Some(GuestError::ZeroClock)
        );
        assert_eq!(
            b.write(Register::LoadCnt, 7, 0).error,
            Some(GuestError::NoClock)
        );
        // LOAD_CNT 0: expires at the first timer, which is never sooner than
        // MIN_TIMER_NS.
        let mut b = armed(10, 0, 0);
        assert_eq!(
            b.write(Register::LoadCnt, 0, 0).timer,
            Timer::Arm(MIN_TIMER_NS)
        );
        assert!(matches!(
            b.deadline(MIN_TIMER_NS, Policy::default()),
            Deadline::Expired { .. }
        ));
        // Huge clock rate: one tick is below a nanosecond, timers still >= 1 ms.
        let mut b = armed(u32::MAX, 1, 0);
        assert_eq!(
            b.write(Register::LoadCnt, 1, 0).timer,
            Timer::Arm(MIN_TIMER_NS)
        );
        // Huge count at 1 Hz: 136 years, no overflow.
        let b = armed(1, u32::MAX, 0);
        assert_eq!(b.read(Register::CurrentCnt, 0), u32::MAX);
        // Reserved STATUS bits are reported, bit 0 still applies.
        let mut b = armed(10, 80, 0);
        let o = b.write(Register::Status, 0xffff_fffe, 0);
        assert_eq!(o.error, Some(GuestError::ReservedStatusBits(0xffff_fffe)));
        assert_eq!(b.stage(), Stage::Idle);
        // CURRENT_CNT is read-only.
        assert_eq!(
            b.write(Register::CurrentCnt, 3, 0).error,
            Some(GuestError::ReadOnly(Register::CurrentCnt))
        );
        // A clock reading that goes backwards does not underflow.
        let b = armed(10, 80, 50 * S);
        assert_eq!(b.remaining_ns(0), 8 * S);
    }

    #[test]
    fn slow_vcpu_rearms_are_bounded() {
        // A vCPU that runs 1% of the time: every re-arm is >= budget/64.
        let mut b = armed(10, 80, 0);
        let p = Policy::default();
        let (mut wall, mut cpu, mut wakeups) = (0u64, 0u64, 0u32);
        let mut delay = 8 * S;
        loop {
            wall += delay;
            cpu += delay / 100;
            wakeups += 1;
            match b.deadline(cpu, p) {
                Deadline::Wait(d) => {
                    assert!(d >= 8 * S / REARM_DIVISOR);
                    delay = d;
                }
                Deadline::Expired { .. } => break,
                Deadline::Idle => unreachable!(),
            }
        }
        assert!(cpu >= 8 * S, "never early");
        assert!(wall >= 800 * S);
        assert!(wakeups < 2000, "{wakeups} wakeups");
    }

    #[test]
    fn rebase_and_resume_keep_the_remaining_budget() {
        let mut b = armed(10, 80, 1000 * S);
        b.rebase(1003 * S);
        assert_eq!((b.budget_ns, b.used_ns), (8 * S, 3 * S));
        // Destination: a new time source starting near 0.
        let mut d = b;
        assert_eq!(d.resume(7), Timer::Arm(5 * S));
        assert_eq!(d.remaining_ns(7 + 2 * S), 3 * S);
        assert_eq!(d.read(Register::CurrentCnt, 7 + 2 * S), 30);
        // An idle bank stays idle; a corrupt stage is treated as idle.
        let mut i = Bank {
            stage: 9,
            ..Bank::default()
        };
        assert_eq!(i.resume(0), Timer::Cancel);
        assert_eq!(i.stage(), Stage::Idle);
    }

    #[test]
    fn a_bank_counts_for_the_vcpu_that_armed_it() {
        let mut b = Bank::default();
        b.write_with(Register::ClockFreqHz, 10, 3, || unreachable!());
        b.write_with(Register::LoadCnt, 10, 3, || unreachable!());
        assert_eq!(b.owner, 0, "loading a disabled bank claims nothing");
        assert!(!b.claims(Register::LoadCnt));
        assert!(b.claims(Register::Status));
        b.write_with(Register::Status, 1, 2, || 0);
        assert_eq!(b.owner, 2);
        assert!(b.claims(Register::LoadCnt));
        b.write_with(Register::LoadCnt, 10, 5, || 7);
        assert_eq!((b.owner, b.start_ns), (5, 7));
        assert!(!b.claims(Register::ClockFreqHz));
        let o = b.retire();
        assert_eq!((o.timer, o.lower_irq), (Timer::Cancel, true));
        assert_eq!((b.stage(), b.enabled()), (Stage::Idle, false));
    }

    /// kdump on 4 vCPUs: the first kernel arms bank N from vCPU N; CPU 1
    /// panics and the crash kernel, on vCPU 1, arms its bank 0.
    #[test]
    fn a_crash_kernel_takes_over_bank_0_and_retires_bank_1() {
        let mut owners = Owners::new(4);
        for cpu in 0..4 {
            assert_eq!(owners.claim(cpu, cpu, None), None);
        }
        // Pets by the same vCPU claim nothing new.
        assert_eq!(owners.claim(1, 1, Some(1)), None);
        // The crash kernel's CPU 0 is vCPU 1.
        assert_eq!(owners.claim(0, 1, Some(0)), Some(1));
        assert_eq!(owners.bank_of(1), Some(0));
        assert_eq!(owners.bank_of(0), None, "vCPU 0 no longer counts");
        owners.release(1, 1);
        assert_eq!(
            owners.bank_of(1),
            Some(0),
            "bank 1 was not vCPU 1's any more"
        );
        owners.release(0, 1);
        assert_eq!(owners.bank_of(1), None);
        // Out-of-range vCPUs are ignored, not a panic.
        assert_eq!(owners.claim(0, 99, None), None);
        assert_eq!(owners.bank_of(99), None);
    }

    #[test]
    fn owners_rebuild_from_the_banks() {
        let mut banks = [armed(10, 80, 0), Bank::default(), armed(10, 80, 0)];
        banks[0].owner = 2;
        banks[2].owner = 0;
        let mut owners = Owners::new(3);
        owners.claim(1, 1, None);
        owners.rebuild(banks.iter());
        assert_eq!(owners.bank_of(2), Some(0));
        assert_eq!(owners.bank_of(0), Some(2));
        assert_eq!(owners.bank_of(1), None);
    }

    #[test]
    fn one_hang_one_action() {
        let mut e = Episode::default();
        assert_eq!(e.report(false, 0), Report::Warning);
        assert_eq!(e.report(true, 0), Report::Action, "at time 0 too");
        assert_eq!(
            e.report(false, S),
            Report::Warning,
            "warnings stay warnings"
        );
        assert_eq!(e.report(true, 2 * S), Report::Ongoing);
        assert_eq!(e.report(true, 3 * S), Report::Ongoing);
        assert!(!e.settle(true), "a bank is still stalled");
        assert!(e.settle(false));
        assert!(!e.settle(false), "ends once");
        assert_eq!(
            e.report(true, 4 * S),
            Report::Action,
            "a new hang acts again"
        );
    }

    #[test]
    fn actions_are_a_second_apart_even_across_episodes() {
        let mut e = Episode::default();
        let mut actions = 0;
        // Stall and recover every 2 ms for 10 s.
        for t in (0..10 * S).step_by(2_000_000) {
            if e.report(true, t) == Report::Action {
                actions += 1;
            }
            e.settle(false);
        }
        assert_eq!(actions, 10);
        assert_eq!(e.report(true, 10 * S + S), Report::Action);
    }

    #[test]
    fn stalled_stages() {
        assert!(!Stage::Idle.stalled());
        assert!(!Stage::Counting.stalled());
        assert!(Stage::Warned.stalled());
        assert!(Stage::Fired.stalled());
    }
}
