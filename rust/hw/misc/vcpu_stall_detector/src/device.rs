// SPDX-License-Identifier: GPL-2.0-or-later

//! QOM shell of the vCPU stall detector.
//!
//! * MMIO: one 0x10-byte bank per vCPU; decode and semantics are
//!   `vigil_core::stall`'s.
//! * Time source per bank (`clock` property): `vcpu-runtime` (default) reads
//!   the CPU-time clock of the thread of the bank's owner, the vCPU that last
//!   enabled or reloaded it (`vigil_core::stall::Owners`); every vCPU's clock
//!   is known from its thread id at realize. `virtual` reads
//!   `QEMU_CLOCK_VIRTUAL`.
//! * One hang, one action: `vigil_core::stall::Episode`.
//! * One host timer per bank on `QEMU_CLOCK_VIRTUAL`, armed only when a
//!   countdown starts and moved (never fired) by every reload: a healthy guest
//!   causes no timer expiries. A vCPU cannot run longer than the virtual clock
//!   advances, so the timer is never early; when it fires, the time source
//!   tells how much budget is really left.
//! * Unnamed GPIO output `i` is CPU `i`'s interrupt (a PPI on `virt`).

use std::{
    ffi::CStr,
    pin::Pin,
    ptr::NonNull,
    sync::atomic::{AtomicBool, Ordering},
};

use bql::{BqlCell, BqlRefCell};
use common::uninit_field_mut;
use hwcore::{
    bindings::DeviceCategory, DeviceImpl, DeviceMethods, DeviceState, InterruptSource, ResetType,
    ResettablePhasesImpl, SysBusDevice, SysBusDeviceImpl, SysBusDeviceMethods,
};
use migration::{
    self, impl_vmstate_struct, vmstate_fields, vmstate_of, vmstate_validate, VMStateDescription,
    VMStateDescriptionBuilder,
};
use qom::{prelude::*, ObjectImpl, ParentField, ParentInit};
use system::{hwaddr, MemoryRegion, MemoryRegionOps, MemoryRegionOpsBuilder};
use util::{
    ensure,
    log::Log,
    log_mask_ln,
    timer::{Timer, CLOCK_VIRTUAL},
};
use vigil_core::stall::{
    self, Bank, Deadline, Episode, Owners, Policy, Register, Report, Stage, BANK_SIZE,
};

use crate::ffi::{self, PropKind, StrProp};

::trace::include_trace!("vigil");

/// Most vCPUs one device serves (arm `virt` with `GICv3` allows 512).
pub const MAX_BANKS: usize = 512;
/// The MMIO region is a whole number of 4 KiB pages.
const REGION_ALIGN: u64 = 0x1000;

/// One device per machine: the guest driver binds one node.
static REALIZED: AtomicBool = AtomicBool::new(false);

/// Where a bank's countdown takes its time from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Source {
    /// CPU time of the vCPU's thread: only time the vCPU really ran counts.
    VcpuRuntime,
    /// `QEMU_CLOCK_VIRTUAL`: deterministic (qtest, icount).
    Virtual,
}

impl Source {
    fn parse(name: Option<&str>) -> Option<Source> {
        match name {
            None | Some("vcpu-runtime") => Some(Source::VcpuRuntime),
            Some("virtual") => Some(Source::Virtual),
            Some(_) => None,
        }
    }
}

/// Per-vCPU statistics shown as read-only QOM properties.
#[derive(Clone, Copy, Debug)]
enum BankStat {
    /// `cpuN-enabled`: STATUS bit 0.
    Enabled,
    /// `cpuN-remaining-ticks`: what `CURRENT_CNT` reads now.
    RemainingTicks,
    /// `cpuN-stalls`: how many times the budget ran out.
    Stalls,
}

/// A bank statistic's reader: `read(device, bank)`.
type StatReader = fn(&VcpuStallDetector, u32) -> u32;

/// The read-only QOM properties `cpuN-<name>` of each bank.
const BANK_STAT_PROPERTIES: [(&str, PropKind, StatReader); 3] = [
    ("enabled", PropKind::Bool, |d, bank| {
        d.bank_stat(bank, BankStat::Enabled)
    }),
    ("remaining-ticks", PropKind::U32, |d, bank| {
        d.bank_stat(bank, BankStat::RemainingTicks)
    }),
    ("stalls", PropKind::U32, |d, bank| {
        d.bank_stat(bank, BankStat::Stalls)
    }),
];

/// One vCPU's bank with its host timer.
#[repr(C)]
#[derive(Debug)]
pub struct BankState {
    index: u32,
    timer: Timer,
    dev: NonNull<VcpuStallDetector>,
    bank: Bank,
    /// The vCPU whose interrupt this bank raised (its owner's), if raised.
    irq_raised: Option<u32>,
}

// SAFETY: `dev` is only dereferenced to a shared reference, under the BQL.
unsafe impl Sync for BankState {}

fn bank_timer_cb(cell: &BqlRefCell<BankState>) {
    let (dev, index) = {
        let b = cell.borrow();
        (b.dev, b.index)
    };
    // SAFETY: the device outlives its banks and their timers.
    unsafe { dev.as_ref() }.deadline(index);
}

impl BankState {
    fn new(index: u32, dev: *const VcpuStallDetector) -> Self {
        BankState {
            index,
            // SAFETY: initialized by init_timer before use.
            timer: unsafe { Timer::new() },
            dev: NonNull::new(dev.cast_mut()).unwrap(),
            bank: Bank::default(),
            irq_raised: None,
        }
    }

    fn init_timer(cell: &BqlRefCell<Self>) {
        let mut b = cell.borrow_mut();
        // SAFETY: banks are part of the device, which QOM never moves.
        let timer = unsafe { Pin::new_unchecked(&mut b.timer) };
        timer.init_full(None, CLOCK_VIRTUAL, Timer::NS, 0, bank_timer_cb, cell);
    }

    fn stat(&self, stat: BankStat) -> u32 {
        match stat {
            BankStat::Enabled => u32::from(self.bank.enabled()),
            BankStat::Stalls => self.bank.stalls,
            BankStat::RemainingTicks => {
                // SAFETY: the device outlives its banks.
                let now = unsafe { self.dev.as_ref() }.now(self.bank.owner);
                self.bank.read(Register::CurrentCnt, now)
            }
        }
    }

    fn apply(&self, timer: stall::Timer) {
        match timer {
            stall::Timer::Keep => {}
            stall::Timer::Cancel => self.timer.delete(),
            stall::Timer::Arm(ns) => self.timer.modify(CLOCK_VIRTUAL.get_ns().saturating_add(ns)),
        }
    }
}

#[repr(C)]
#[derive(qom::Object, hwcore::Device)]
/// vCPU stall detector device state.
pub struct VcpuStallDetector {
    parent_obj: ParentField<SysBusDevice>,
    iomem: MemoryRegion,
    /// Advertised to the guest in the device tree (Linux: 1..99).
    #[property(rename = "clock-frequency", default = 10)]
    clock_hz: u32,
    /// Advertised to the guest in the device tree (Linux: 1..599).
    #[property(rename = "timeout-sec", default = 8)]
    timeout_sec: u32,
    /// `vcpu-runtime` (default) or `virtual`.
    #[property(rename = "clock")]
    clock_name: StrProp,
    /// PPI number (0..15) of the per-CPU interrupt on Arm boards, -1 for none.
    #[property(rename = "ppi", default = 15)]
    ppi: i32,
    /// Take the watchdog action at the first expiry instead of after a grace
    /// budget.
    #[property(rename = "immediate-action", default = false)]
    immediate_action: bool,

    /// From the `clock` property, at realize (QOM zeroes it: `VcpuRuntime`).
    source: BqlCell<Source>,
    num_banks: BqlCell<u32>,
    num_banks_saved: BqlCell<u32>,
    /// Each vCPU's thread CPU-time clock (`clock=vcpu-runtime`), from realize.
    vcpu_clocks: BqlRefCell<Vec<Option<libc::clockid_t>>>,
    /// Which bank each vCPU counts for.
    owners: BqlRefCell<Owners>,
    /// The watchdog action was taken in the current stall episode.
    episode_acted: BqlCell<bool>,
    /// `Episode::last_action` (virtual clock).
    last_action: BqlCell<u64>,
    ppis: [InterruptSource; MAX_BANKS],
    banks: [BqlRefCell<BankState>; MAX_BANKS],
}

qom_isa!(VcpuStallDetector: SysBusDevice, DeviceState, Object);

// SAFETY: repr(C) with the SysBusDevice parent first; the class is the
// parent's (no class fields of its own).
unsafe impl ObjectType for VcpuStallDetector {
    type Class = <SysBusDevice as ObjectType>::Class;
    const TYPE_NAME: &'static CStr = crate::TYPE_VCPU_STALL_DETECTOR;
}

impl ObjectImpl for VcpuStallDetector {
    type ParentType = SysBusDevice;

    const INSTANCE_INIT: Option<unsafe fn(ParentInit<Self>)> = Some(Self::init);
    const INSTANCE_POST_INIT: Option<fn(&Self)> = Some(Self::post_init);
    const CLASS_INIT: fn(&mut Self::Class) = Self::class_init;
}

impl DeviceImpl for VcpuStallDetector {
    const VMSTATE: Option<VMStateDescription<Self>> = Some(VMSTATE_VCPU_STALL_DETECTOR);
    const REALIZE: Option<fn(&Self) -> util::Result<()>> = Some(Self::realize);
}

impl ResettablePhasesImpl for VcpuStallDetector {
    const HOLD: Option<fn(&Self, ResetType)> = Some(Self::reset_hold);
}

impl SysBusDeviceImpl for VcpuStallDetector {}

impl VcpuStallDetector {
    fn class_init(klass: &mut <Self as ObjectType>::Class) {
        klass.class_init::<Self>();
        let dc = &mut klass.parent_class;
        dc.user_creatable = true;
        dc.desc = c"vCPU stall detector (Linux qemu,vcpu-stall-detector)".as_ptr();
        dc.categories[0] |= 1 << DeviceCategory::DEVICE_CATEGORY_WATCHDOG as u32;
        ffi::describe_properties(
            klass,
            &[
                (
                    c"clock-frequency",
                    c"tick rate in Hz the guest is told to program (1-99), in the device tree and ACPI _DSD; Linux's driver reads it only from the device tree and uses 10 under ACPI",
                ),
                (
                    c"timeout-sec",
                    c"timeout in seconds the guest is told to use (1-599), in the device tree and ACPI _DSD; Linux's driver reads it only from the device tree and uses 8 under ACPI",
                ),
                (
                    c"clock",
                    c"what a countdown consumes: vcpu-runtime (CPU time of the thread of the vCPU that last armed or reloaded the bank, default; virtual under record/replay) or virtual (QEMU_CLOCK_VIRTUAL)",
                ),
                (c"ppi", c"PPI number (0-15) of the per-CPU interrupt, -1 for none"),
                (
                    c"immediate-action",
                    c"take the watchdog action at the first expiry, not after a grace budget",
                ),
            ],
        );
    }

    /// # Safety
    ///
    /// Called once by QOM on a zeroed, correctly sized instance.
    unsafe fn init(mut this: ParentInit<Self>) {
        static OPS: MemoryRegionOps<VcpuStallDetector> =
            MemoryRegionOpsBuilder::<VcpuStallDetector>::new()
                .read(&VcpuStallDetector::read)
                .write(&VcpuStallDetector::write)
                .little_endian()
                // Every size and alignment reaches decode(), which logs the
                // bad ones, rather than being refused by the memory core.
                .valid_sizes(1, 8)
                .valid_unaligned()
                .impl_sizes(1, 8)
                .impl_unaligned()
                .build();

        MemoryRegion::init_io(
            &mut uninit_field_mut!(*this, iomem),
            &OPS,
            "vcpu-stall-detector",
            MAX_BANKS as u64 * BANK_SIZE,
        );

        uninit_field_mut!(*this, vcpu_clocks).write(BqlRefCell::new(Vec::new()));
        uninit_field_mut!(*this, owners).write(BqlRefCell::new(Owners::default()));
        let state = this.as_ptr();
        for index in 0..MAX_BANKS {
            let mut slot = uninit_field_mut!(*this, banks[index]);
            // Two steps, so that the timer is initialized in its final place.
            let cell = slot.write(BqlRefCell::new(BankState::new(index as u32, state)));
            BankState::init_timer(cell);
        }
    }

    fn post_init(&self) {
        self.init_mmio(&self.iomem);
    }

    fn source(&self) -> Source {
        self.source.get()
    }

    fn policy(&self) -> Policy {
        Policy {
            immediate_action: self.immediate_action,
        }
    }

    /// The time source of vCPU `vcpu` now, in ns.
    fn now(&self, vcpu: u32) -> u64 {
        match self.source() {
            Source::Virtual => CLOCK_VIRTUAL.get_ns(),
            Source::VcpuRuntime => self
                .vcpu_clocks
                .borrow()
                .get(vcpu as usize)
                .copied()
                .flatten()
                .and_then(ffi::cpu_clock_ns)
                .unwrap_or(0),
        }
    }

    fn realize(&self) -> util::Result<()> {
        stall::validate_config(self.clock_hz, self.timeout_sec, self.ppi)
            .map_err(|e| util::Error::msg(format!("vcpu-stall-detector: {e}")))?;
        let clock = self.clock_name.get();
        let Some(mut source) = Source::parse(clock.as_deref()) else {
            return Err(util::Error::format(format_args!(
                "vcpu-stall-detector: property 'clock' must be 'vcpu-runtime' or 'virtual' (got \
                 '{}')",
                clock.unwrap_or_default()
            )));
        };
        if source == Source::VcpuRuntime && ffi::replay_active() {
            // Host CPU time differs between record and replay: a countdown
            // over it would make the replayed guest diverge.
            ensure!(
                clock.is_none(),
                "vcpu-stall-detector: property 'clock' cannot be 'vcpu-runtime' under \
                 record/replay (host CPU time is not replayed); use clock=virtual"
            );
            ffi::warn(
                "vcpu-stall-detector: record/replay is active: property 'clock' defaults to \
                 'virtual' (the virtual clock is replayed, host CPU time is not)",
            );
            source = Source::Virtual;
        }
        ensure!(
            !ffi::nmi_action_does_nothing(),
            "vcpu-stall-detector: -action watchdog=inject-nmi does nothing on this machine (it \
             has no NMI interface); the device's own interrupt (property 'ppi') reaches the \
             stalled vCPU: use another watchdog action"
        );
        let cpus = ffi::cpu_count();
        ensure!(cpus >= 1, "vcpu-stall-detector: the machine has no vCPUs");
        ensure!(
            cpus as usize <= MAX_BANKS,
            "vcpu-stall-detector: {cpus} vCPUs, at most {MAX_BANKS} are supported"
        );
        ensure!(
            !REALIZED.swap(true, Ordering::SeqCst),
            "vcpu-stall-detector: only one vcpu-stall-detector per machine"
        );

        let mut clocks = Vec::with_capacity(cpus as usize);
        if source == Source::VcpuRuntime {
            ensure!(
                ffi::check_thread_clocks(),
                "vcpu-stall-detector: property 'clock': this host cannot read threads' CPU time; \
                 use clock=virtual"
            );
            for i in 0..cpus {
                let Some(tid) = ffi::vcpu_thread_id(i) else {
                    return Err(util::Error::format(format_args!(
                        "vcpu-stall-detector: property 'clock': vCPU {i} has no thread; use \
                         clock=virtual"
                    )));
                };
                let id = ffi::thread_cpu_clock(tid);
                trace::trace_vcpu_stall_clock(i, tid, id);
                clocks.push(Some(id));
            }
        }
        *self.vcpu_clocks.borrow_mut() = clocks;
        *self.owners.borrow_mut() = Owners::new(cpus);
        self.source.set(source);
        self.num_banks.set(cpus);
        // Whole pages, so that an access past the last bank still reaches
        // decode() (and its guest-error log) rather than unassigned memory.
        let size = (u64::from(cpus) * BANK_SIZE).next_multiple_of(REGION_ALIGN);
        ffi::set_region_size(&self.iomem, size);
        self.init_gpio_out(&self.ppis[..cpus as usize]);
        for i in 0..cpus {
            for (stat, kind, read) in BANK_STAT_PROPERTIES {
                ffi::add_readonly_property(self, &format!("cpu{i}-{stat}"), kind, read, i);
            }
        }
        Ok(())
    }

    /// One statistic of bank `i`, for its read-only QOM property.
    fn bank_stat(&self, i: u32, stat: BankStat) -> u32 {
        self.banks[i as usize].borrow().stat(stat)
    }

    fn banks(&self) -> impl Iterator<Item = &BqlRefCell<BankState>> {
        self.banks.iter().take(self.num_banks.get() as usize)
    }

    fn read(&self, offset: hwaddr, size: u32) -> u64 {
        match stall::decode(offset, size, self.num_banks.get()) {
            Err(e) => {
                log_mask_ln!(Log::GuestError, "vcpu-stall-detector: read: {e}");
                0
            }
            Ok((i, reg)) => {
                let b = self.banks[i as usize].borrow();
                u64::from(b.bank.read(reg, self.now(b.bank.owner)))
            }
        }
    }

    fn write(&self, offset: hwaddr, value: u64, size: u32) {
        let (i, reg) = match stall::decode(offset, size, self.num_banks.get()) {
            Err(e) => {
                log_mask_ln!(
                    Log::GuestError,
                    "vcpu-stall-detector: write {value:#x}: {e}"
                );
                return;
            }
            Ok(v) => v,
        };
        // decode() only accepts 4-byte accesses.
        let value = value as u32;
        // The vCPU making the access; anything else counts as bank i's own.
        let owner = ffi::current_cpu()
            .filter(|&c| c < self.num_banks.get())
            .unwrap_or(i);
        let mut b = self.banks[i as usize].borrow_mut();
        let claims = b.bank.claims(reg);
        let prev = (b.bank.stage() != Stage::Idle).then_some(b.bank.owner);
        let was_stalled = b.bank.stage().stalled();
        let out = b.bank.write_with(reg, value, owner, || self.now(owner));
        if let Some(e) = out.error {
            log_mask_ln!(Log::GuestError, "vcpu-stall-detector: cpu {i}: {e}");
        }
        match (reg, out.timer) {
            (Register::Status, stall::Timer::Arm(_)) => trace::trace_vcpu_stall_enable(
                i,
                b.bank.load_cnt,
                b.bank.clock_hz,
                b.bank.budget_ns,
            ),
            (Register::Status, _) => trace::trace_vcpu_stall_disable(i),
            (Register::LoadCnt, stall::Timer::Arm(_)) => {
                trace::trace_vcpu_stall_load(i, value, b.bank.budget_ns)
            }
            _ => {}
        }
        b.apply(out.timer);
        let idle = b.bank.stage() == Stage::Idle;
        let stalled = b.bank.stage().stalled();
        if out.lower_irq {
            self.lower_irq(&mut b);
        }
        drop(b);
        if claims {
            let retire = {
                let mut owners = self.owners.borrow_mut();
                if idle {
                    if let Some(p) = prev {
                        owners.release(i, p);
                    }
                    None
                } else {
                    owners.claim(i, owner, prev)
                }
            };
            if let Some(old) = retire {
                self.retire(old, owner, i);
            }
        }
        if was_stalled && !stalled {
            self.settle(i);
        }
    }

    fn lower_irq(&self, b: &mut BankState) {
        if let Some(cpu) = b.irq_raised.take() {
            self.ppis[cpu as usize].lower();
        }
    }

    /// vCPU `owner` started counting for bank `by`: its older bank `old`,
    /// armed by a kernel that is gone (kexec, kdump), is disabled.
    fn retire(&self, old: u32, owner: u32, by: u32) {
        let mut b = self.banks[old as usize].borrow_mut();
        let was_stalled = b.bank.stage().stalled();
        let out = b.bank.retire();
        b.apply(out.timer);
        self.lower_irq(&mut b);
        drop(b);
        trace::trace_vcpu_stall_retire(old, owner, by);
        if was_stalled {
            self.settle(old);
        }
    }

    /// Bank `bank` stopped being stalled: the episode ends if none is any more.
    fn settle(&self, bank: u32) {
        let any = self.banks().any(|c| c.borrow().bank.stage().stalled());
        let mut e = self.episode();
        if e.settle(any) {
            trace::trace_vcpu_stall_episode_end(bank);
        }
        self.set_episode(e);
    }

    fn episode(&self) -> Episode {
        Episode {
            acted: self.episode_acted.get(),
            last_action: self.last_action.get(),
        }
    }

    fn set_episode(&self, e: Episode) {
        self.episode_acted.set(e.acted);
        self.last_action.set(e.last_action);
    }

    /// Bank `i`'s host timer fired.
    fn deadline(&self, i: u32) {
        let mut b = self.banks[i as usize].borrow_mut();
        let owner = b.bank.owner;
        let now = self.now(owner);
        let budget_ns = b.bank.budget_ns;
        match b.bank.deadline(now, self.policy()) {
            Deadline::Idle => {}
            Deadline::Wait(ns) => {
                trace::trace_vcpu_stall_wait(i, b.bank.remaining_ns(now));
                b.apply(stall::Timer::Arm(ns));
            }
            Deadline::Expired { act, rearm } => {
                if let Some(ns) = rearm {
                    b.apply(stall::Timer::Arm(ns));
                }
                // The interrupt goes to the stalled vCPU: the bank's owner.
                if b.irq_raised.is_none() {
                    b.irq_raised = Some(owner);
                }
                drop(b);
                let mut episode = self.episode();
                let report = episode.report(act, CLOCK_VIRTUAL.get_ns());
                self.set_episode(episode);
                trace::trace_vcpu_stall_expired(i, owner, budget_ns, report as u32);
                ffi::send_stall_event(self, owner, i, budget_ns / 1_000_000, report);
                self.ppis[owner as usize].raise();
                if report == Report::Action {
                    trace::trace_vcpu_stall_action(i, owner);
                    if ffi::nmi_action_does_nothing() {
                        // Switched to at run time (watchdog-set-action).
                        ffi::warn(
                            "vcpu-stall-detector: watchdog action inject-nmi: this machine has no \
                             NMI interface, nothing was injected (the stalled vCPU's interrupt \
                             was raised)",
                        );
                    }
                    ffi::perform_watchdog_action();
                }
            }
        }
    }

    fn reset_hold(&self, _type: ResetType) {
        for (i, cell) in self.banks().enumerate() {
            let mut b = cell.borrow_mut();
            b.bank = Bank::default();
            b.irq_raised = None;
            b.timer.delete();
            drop(b);
            self.ppis[i].lower();
        }
        let cpus = self.num_banks.get();
        *self.owners.borrow_mut() = Owners::new(cpus);
        // A reset ends the episode; the action rate limit survives it (a
        // guest could otherwise reset itself through the device in a loop).
        self.episode_acted.set(false);
    }

    fn pre_save(&self) -> Result<(), migration::Infallible> {
        for cell in self.banks() {
            let mut b = cell.borrow_mut();
            let now = self.now(b.bank.owner);
            b.bank.rebase(now);
        }
        self.num_banks_saved.set(self.num_banks.get());
        Ok(())
    }

    fn post_load(&self, version_id: u8) -> Result<(), migration::Infallible> {
        let cpus = self.num_banks.get();
        for cell in self.banks() {
            let mut b = cell.borrow_mut();
            if version_id < 2 || b.bank.owner >= cpus {
                // Not from a sane source: count for the bank's own vCPU.
                b.bank.owner = b.index;
            }
            let now = self.now(b.bank.owner);
            let timer = b.bank.resume(now);
            b.apply(timer);
        }
        let banks: Vec<Bank> = self.banks().map(|c| c.borrow().bank).collect();
        self.owners.borrow_mut().rebuild(banks.iter());
        Ok(())
    }

    fn validate_num_banks(&self, _version_id: u8) -> bool {
        self.num_banks.get() == self.num_banks_saved.get()
    }
}

const VMSTATE_BANK: VMStateDescription<BankState> = VMStateDescriptionBuilder::<BankState>::new()
    .name(c"vcpu-stall-detector/bank")
    .version_id(2)
    .minimum_version_id(1)
    .fields(vmstate_fields! {
        vmstate_of!(BankState, bank.status),
        vmstate_of!(BankState, bank.load_cnt),
        vmstate_of!(BankState, bank.clock_hz),
        vmstate_of!(BankState, bank.stage),
        vmstate_of!(BankState, bank.budget_ns),
        vmstate_of!(BankState, bank.used_ns),
        vmstate_of!(BankState, bank.stalls),
        vmstate_of!(BankState, bank.owner).with_version_id(2),
    })
    .build();
impl_vmstate_struct!(BankState, VMSTATE_BANK);

const VALIDATE_BANKS: &CStr = c"the number of vCPUs must match";

const VMSTATE_VCPU_STALL_DETECTOR: VMStateDescription<VcpuStallDetector> =
    VMStateDescriptionBuilder::<VcpuStallDetector>::new()
        .name(c"vcpu-stall-detector")
        .version_id(2)
        .minimum_version_id(1)
        .pre_save(&VcpuStallDetector::pre_save)
        .post_load(&VcpuStallDetector::post_load)
        .fields(vmstate_fields! {
            vmstate_of!(VcpuStallDetector, num_banks_saved),
            vmstate_validate!(VcpuStallDetector, VALIDATE_BANKS, VcpuStallDetector::validate_num_banks),
            vmstate_of!(VcpuStallDetector, banks[0 .. num_banks_saved], VcpuStallDetector::validate_num_banks),
            vmstate_of!(VcpuStallDetector, episode_acted).with_version_id(2),
            vmstate_of!(VcpuStallDetector, last_action).with_version_id(2),
        })
        .build();
