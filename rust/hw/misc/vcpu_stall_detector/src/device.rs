// SPDX-License-Identifier: GPL-2.0-or-later

//! QOM shell of the vCPU stall detector.
//!
//! * MMIO: one 0x10-byte bank per vCPU; decode and semantics are
//!   `vigil_core::stall`'s.
//! * Time source per bank (`clock` property): `vcpu-runtime` (default) reads
//!   the CPU-time clock of the bank's vCPU thread, learned by running a work
//!   item on that thread; `virtual` reads `QEMU_CLOCK_VIRTUAL`.
//! * One host timer per bank on `QEMU_CLOCK_VIRTUAL`, armed only when a
//!   countdown starts and moved (never fired) by every reload: a healthy
//!   guest causes no timer expiries. A vCPU cannot run longer than the
//!   virtual clock advances, so the timer is never early; when it fires, the
//!   time source tells how much budget is really left.
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
use vigil_core::stall::{self, Bank, Deadline, Policy, Register, BANK_SIZE};

use crate::ffi::{self, StrProp};

::trace::include_trace!("vigil");

/// Most vCPUs one device serves (arm `virt` with GICv3 allows 512).
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
pub enum BankStat {
    /// `cpuN-enabled`: STATUS bit 0.
    Enabled,
    /// `cpuN-remaining-ticks`: what CURRENT_CNT reads now.
    RemainingTicks,
    /// `cpuN-stalls`: how many times the budget ran out.
    Stalls,
}

/// One vCPU's bank with its host timer.
#[repr(C)]
#[derive(Debug)]
pub struct BankState {
    index: u32,
    timer: Timer,
    dev: NonNull<VcpuStallDetector>,
    /// The vCPU thread's CPU-time clock, once that thread reported it.
    cpu_clock: Option<libc::clockid_t>,
    bank: Bank,
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
            cpu_clock: None,
            bank: Bank::default(),
        }
    }

    fn init_timer(cell: &BqlRefCell<Self>) {
        let mut b = cell.borrow_mut();
        // SAFETY: banks are part of the device, which QOM never moves.
        let timer = unsafe { Pin::new_unchecked(&mut b.timer) };
        timer.init_full(None, CLOCK_VIRTUAL, Timer::NS, 0, bank_timer_cb, cell);
    }

    pub fn set_cpu_clock(&mut self, id: libc::clockid_t) {
        self.cpu_clock = Some(id);
        trace::trace_vcpu_stall_clock(self.index, id);
    }

    /// The bank's time source now, in ns. Before the vCPU thread reported
    /// its clock the vCPU has not run guest code: time stands still.
    fn now(&self, source: Source) -> u64 {
        Self::read_source(source, self.cpu_clock)
    }

    fn read_source(source: Source, cpu_clock: Option<libc::clockid_t>) -> u64 {
        match source {
            Source::Virtual => CLOCK_VIRTUAL.get_ns(),
            Source::VcpuRuntime => cpu_clock.and_then(ffi::cpu_clock_ns).unwrap_or(0),
        }
    }

    pub fn stat(&self, stat: BankStat) -> u32 {
        match stat {
            BankStat::Enabled => u32::from(self.bank.enabled()),
            BankStat::Stalls => self.bank.stalls,
            BankStat::RemainingTicks => {
                // SAFETY: the device outlives its banks.
                let source = unsafe { self.dev.as_ref() }.source();
                self.bank.read(Register::CurrentCnt, self.now(source))
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
    /// Take the watchdog action at the first expiry instead of after a grace budget.
    #[property(rename = "immediate-action", default = false)]
    immediate_action: bool,

    /// From the `clock` property, at realize (QOM zeroes it: VcpuRuntime).
    source: BqlCell<Source>,
    num_banks: BqlCell<u32>,
    num_banks_saved: BqlCell<u32>,
    ppis: [InterruptSource; MAX_BANKS],
    banks: [BqlRefCell<BankState>; MAX_BANKS],
}

qom_isa!(VcpuStallDetector: SysBusDevice, DeviceState, Object);

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
                (c"clock-frequency", c"tick rate in Hz the guest is told to program (1-99)"),
                (c"timeout-sec", c"timeout in seconds the guest is told to use (1-599)"),
                (
                    c"clock",
                    c"what a countdown consumes: vcpu-runtime (the vCPU thread's CPU time, default) or virtual (QEMU_CLOCK_VIRTUAL)",
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

    fn realize(&self) -> util::Result<()> {
        stall::validate_config(self.clock_hz, self.timeout_sec, self.ppi)
            .map_err(|e| util::Error::msg(format!("vcpu-stall-detector: {e}")))?;
        let clock = self.clock_name.get();
        let Some(source) = Source::parse(clock.as_deref()) else {
            return Err(util::Error::format(format_args!(
                "vcpu-stall-detector: property 'clock' must be 'vcpu-runtime' or 'virtual' (got '{}')",
                clock.unwrap_or_default()
            )));
        };
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

        self.source.set(source);
        self.num_banks.set(cpus);
        // Whole pages, so that an access past the last bank still reaches
        // decode() (and its guest-error log) rather than unassigned memory.
        let size = (u64::from(cpus) * BANK_SIZE).next_multiple_of(REGION_ALIGN);
        ffi::set_region_size(&self.iomem, size);
        self.init_gpio_out(&self.ppis[..cpus as usize]);
        let obj = self.as_object_ptr();
        for (i, cell) in self.banks.iter().take(cpus as usize).enumerate() {
            if source == Source::VcpuRuntime {
                ffi::learn_vcpu_clock(i as u32, cell);
            }
            ffi::add_bank_stat_property(obj, &format!("cpu{i}-enabled"), BankStat::Enabled, cell);
            ffi::add_bank_stat_property(
                obj,
                &format!("cpu{i}-remaining-ticks"),
                BankStat::RemainingTicks,
                cell,
            );
            ffi::add_bank_stat_property(obj, &format!("cpu{i}-stalls"), BankStat::Stalls, cell);
        }
        Ok(())
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
                u64::from(b.bank.read(reg, b.now(self.source())))
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
        let mut b = self.banks[i as usize].borrow_mut();
        let source = self.source();
        let clock = b.cpu_clock;
        let out = b
            .bank
            .write_with(reg, value, || BankState::read_source(source, clock));
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
        drop(b);
        if out.lower_irq {
            self.ppis[i as usize].lower();
        }
    }

    /// Bank `i`'s host timer fired.
    fn deadline(&self, i: u32) {
        let mut b = self.banks[i as usize].borrow_mut();
        let now = b.now(self.source());
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
                drop(b);
                trace::trace_vcpu_stall_expired(i, budget_ns, act);
                ffi::send_stall_event(self.as_object_ptr(), i, budget_ns / 1_000_000, act);
                self.ppis[i as usize].raise();
                if act {
                    trace::trace_vcpu_stall_action(i);
                    ffi::perform_watchdog_action();
                }
            }
        }
    }

    fn reset_hold(&self, _type: ResetType) {
        for (i, cell) in self.banks().enumerate() {
            let mut b = cell.borrow_mut();
            b.bank = Bank::default();
            b.timer.delete();
            drop(b);
            self.ppis[i].lower();
        }
    }

    fn pre_save(&self) -> Result<(), migration::Infallible> {
        for cell in self.banks() {
            let mut b = cell.borrow_mut();
            let now = b.now(self.source());
            b.bank.rebase(now);
        }
        self.num_banks_saved.set(self.num_banks.get());
        Ok(())
    }

    fn post_load(&self, _version_id: u8) -> Result<(), migration::Infallible> {
        for cell in self.banks() {
            let mut b = cell.borrow_mut();
            let now = b.now(self.source());
            let timer = b.bank.resume(now);
            b.apply(timer);
        }
        Ok(())
    }

    fn validate_num_banks(&self, _version_id: u8) -> bool {
        self.num_banks.get() == self.num_banks_saved.get()
    }
}

const VMSTATE_BANK: VMStateDescription<BankState> = VMStateDescriptionBuilder::<BankState>::new()
    .name(c"vcpu-stall-detector/bank")
    .version_id(1)
    .minimum_version_id(1)
    .fields(vmstate_fields! {
        vmstate_of!(BankState, bank.status),
        vmstate_of!(BankState, bank.load_cnt),
        vmstate_of!(BankState, bank.clock_hz),
        vmstate_of!(BankState, bank.stage),
        vmstate_of!(BankState, bank.budget_ns),
        vmstate_of!(BankState, bank.used_ns),
        vmstate_of!(BankState, bank.stalls),
    })
    .build();
impl_vmstate_struct!(BankState, VMSTATE_BANK);

const VALIDATE_BANKS: &CStr = c"the number of vCPUs must match";

const VMSTATE_VCPU_STALL_DETECTOR: VMStateDescription<VcpuStallDetector> =
    VMStateDescriptionBuilder::<VcpuStallDetector>::new()
        .name(c"vcpu-stall-detector")
        .version_id(1)
        .minimum_version_id(1)
        .pre_save(&VcpuStallDetector::pre_save)
        .post_load(&VcpuStallDetector::post_load)
        .fields(vmstate_fields! {
            vmstate_of!(VcpuStallDetector, num_banks_saved),
            vmstate_validate!(VcpuStallDetector, VALIDATE_BANKS, VcpuStallDetector::validate_num_banks),
            vmstate_of!(VcpuStallDetector, banks[0 .. num_banks_saved], VcpuStallDetector::validate_num_banks),
        })
        .build();
