// SPDX-License-Identifier: GPL-2.0-or-later

//! The few QEMU and libc functions this device needs that QEMU's Rust crates
//! do not wrap. All `unsafe` of the device lives here.

use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    ptr::{addr_of, NonNull},
};

use bql::BqlRefCell;
use qom::bindings::{
    object_class_property_set_description, object_property_add, Object, ObjectClass, Visitor,
};
use vigil_core::stall::Report;

use crate::device::{BankStat, BankState};

/// `VcpuStallStage` from the QAPI schema (qapi/run-state.json).
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code)] // values are only created by conversion from `Report`
pub enum VcpuStallStage {
    Warning = 0,
    Action = 1,
    Ongoing = 2,
}

extern "C" {
    fn watchdog_perform_action();
    fn qapi_event_send_vcpu_stall(
        qom_path: *const c_char,
        cpu_index: i64,
        bank: i64,
        budget_ms: u64,
        stage: VcpuStallStage,
    );
    fn object_get_canonical_path(obj: *const Object) -> *mut c_char;
    fn g_free(ptr: *mut c_void);
    fn warn_report(fmt: *const c_char, ...);
    fn visit_type_uint32(
        v: *mut Visitor,
        name: *const c_char,
        obj: *mut u32,
        errp: *mut c_void,
    ) -> bool;
    fn visit_type_bool(
        v: *mut Visitor,
        name: *const c_char,
        obj: *mut bool,
        errp: *mut c_void,
    ) -> bool;
    // hw/misc/vcpu-stall-detector-host.c (include/hw/misc/vcpu_stall_detector.h)
    fn vcpu_stall_detector_current_cpu() -> c_int;
    fn vcpu_stall_detector_cpu_thread_id(cpu_index: c_int) -> c_int;
    fn vcpu_stall_detector_replay_active() -> bool;
    fn vcpu_stall_detector_action_is_nmi() -> bool;
    fn vcpu_stall_detector_machine_has_nmi() -> bool;
}

/// Number of vCPUs the machine has created (indices 0..n).
pub fn cpu_count() -> u32 {
    let mut n: u32 = 0;
    while n < i32::MAX as u32 && vcpu_thread_id(n).is_some() {
        n += 1;
    }
    n
}

/// The host thread id of vCPU `index`, once its thread exists.
pub fn vcpu_thread_id(index: u32) -> Option<libc::pid_t> {
    let index = c_int::try_from(index).ok()?;
    // SAFETY: looks the CPU up by index under the BQL; no pointer escapes.
    let tid = unsafe { vcpu_stall_detector_cpu_thread_id(index) };
    (tid > 0).then_some(tid)
}

/// The vCPU whose thread runs the caller (an MMIO access from the guest),
/// or `None` on any other thread (the main loop, qtest, the monitor).
pub fn current_cpu() -> Option<u32> {
    // SAFETY: reads the calling thread's current_cpu; no arguments.
    u32::try_from(unsafe { vcpu_stall_detector_current_cpu() }).ok()
}

/// Record/replay (`-icount rr=...`) is active.
pub fn replay_active() -> bool {
    // SAFETY: reads a global set once at start-up; no arguments.
    unsafe { vcpu_stall_detector_replay_active() }
}

/// The watchdog action is `inject-nmi` but the machine has nothing that
/// would deliver an NMI (`nmi_monitor_handle` fails, and nobody reads why).
pub fn nmi_action_does_nothing() -> bool {
    // SAFETY: reads the action and walks the QOM tree, under the BQL.
    unsafe { vcpu_stall_detector_action_is_nmi() && !vcpu_stall_detector_machine_has_nmi() }
}

/// Prints `msg` as a QEMU warning (`warn_report`).
pub fn warn(msg: &str) {
    let msg = CString::new(msg).unwrap_or_default();
    // SAFETY: a "%s" format with one NUL-terminated string argument.
    unsafe {
        warn_report(c"%s".as_ptr(), msg.as_ptr());
    }
}

/// The CPU-time clock of host thread `tid` of this process.
///
/// This is Linux's ABI for per-thread CPU clocks (`MAKE_THREAD_CPUCLOCK`
/// of `CPUCLOCK_SCHED`, as glibc's `pthread_getcpuclockid` computes it).
/// Computing it from the thread id, which QEMU records when it creates the
/// vCPU thread, gives every bank its vCPU's clock at realize, before any
/// migration or snapshot state is loaded, without running anything on the
/// vCPU thread. [`check_thread_clocks`] verifies the formula on this host.
pub fn thread_cpu_clock(tid: libc::pid_t) -> libc::clockid_t {
    const CPUCLOCK_PERTHREAD: libc::clockid_t = 4;
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    (!tid << 3) | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED
}

/// Whether [`thread_cpu_clock`] is what this host's libc computes (for the
/// calling thread).
pub fn check_thread_clocks() -> bool {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is always valid for the calling thread and id
    // is a valid out pointer; gettid has no preconditions.
    let (rc, tid) = unsafe {
        (
            libc::pthread_getcpuclockid(libc::pthread_self(), &mut id),
            libc::gettid(),
        )
    };
    rc == 0 && id == thread_cpu_clock(tid) && cpu_clock_ns(id).is_some()
}

/// Reads a thread CPU-time clock, in ns.
pub fn cpu_clock_ns(id: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer; an invalid id only makes it fail.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return None;
    }
    Some((ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
}

/// Sends the `VCPU_STALL` QMP event (throttled by QEMU's monitor).
pub fn send_stall_event(obj: *const Object, cpu: u32, bank: u32, budget_ms: u64, report: Report) {
    let stage = match report {
        Report::Warning => VcpuStallStage::Warning,
        Report::Action => VcpuStallStage::Action,
        Report::Ongoing => VcpuStallStage::Ongoing,
    };
    // SAFETY: obj is the live device; the returned string is owned by us and
    // freed with g_free after the event is sent (which copies it).
    unsafe {
        let path = object_get_canonical_path(obj);
        qapi_event_send_vcpu_stall(path, i64::from(cpu), i64::from(bank), budget_ms, stage);
        g_free(path.cast());
    }
}

/// Takes the action configured with `-action watchdog=` /
/// `watchdog-set-action`.
pub fn perform_watchdog_action() {
    // SAFETY: no arguments; called from the main loop with the BQL held.
    unsafe { watchdog_perform_action() }
}

/// A qdev string property (`char *` in the device, owned by qdev).
#[repr(transparent)]
#[derive(Debug)]
pub struct StrProp(*mut c_char);

// SAFETY: the pointer is only read, and only under the BQL; qdev frees it.
unsafe impl Sync for StrProp {}
// SAFETY: as above.
unsafe impl Send for StrProp {}

// SAFETY: qdev_prop_string describes a `char *` field, which StrProp is.
unsafe impl hwcore::QDevProp for StrProp {
    const BASE_INFO: *const hwcore::bindings::PropertyInfo =
        addr_of!(hwcore::bindings::qdev_prop_string);
}

impl StrProp {
    /// The property's value, if it was set.
    pub fn get(&self) -> Option<String> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: qdev stores a NUL-terminated g_strdup'ed string here.
        Some(
            unsafe { CStr::from_ptr(self.0) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Shrinks the device's MMIO region to the banks actually present.
pub fn set_region_size(mr: &system::MemoryRegion, size: u64) {
    // SAFETY: mr is a valid, initialized region owned by the device, which
    // is not mapped yet (called from realize).
    unsafe { system::bindings::memory_region_set_size(mr.as_mut_ptr(), size) }
}

/// Sets the `-device ...,help` text of the class's properties.
pub fn describe_properties<K>(klass: &mut K, descriptions: &[(&CStr, &CStr)]) {
    let oc = std::ptr::from_mut(klass).cast::<ObjectClass>();
    for (name, text) in descriptions {
        // SAFETY: every QOM class struct starts with its ObjectClass; the
        // properties were registered by class_init just before.
        unsafe {
            object_class_property_set_description(oc, name.as_ptr(), text.as_ptr());
        }
    }
}

struct StatProp {
    cell: NonNull<BqlRefCell<BankState>>,
    stat: BankStat,
}

/// Adds a read-only QOM property `name` showing one statistic of a bank.
pub fn add_bank_stat_property(
    obj: *const Object,
    name: &str,
    stat: BankStat,
    cell: &BqlRefCell<BankState>,
) {
    let opaque = Box::into_raw(Box::new(StatProp {
        cell: NonNull::from(cell),
        stat,
    }));
    let name = CString::new(name).unwrap();
    let ty = if matches!(stat, BankStat::Enabled) {
        c"bool"
    } else {
        c"uint32"
    };
    // SAFETY: obj is the live device; QOM copies the name; release_stat
    // frees opaque when the property goes away.
    unsafe {
        object_property_add(
            obj.cast_mut(),
            name.as_ptr(),
            ty.as_ptr(),
            Some(get_stat),
            None,
            Some(release_stat),
            opaque.cast(),
        );
    }
}

unsafe extern "C" fn get_stat(
    _obj: *mut Object,
    v: *mut Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: *mut *mut qom::bindings::Error,
) {
    // SAFETY: opaque is the StatProp of add_bank_stat_property; the bank
    // lives as long as the device that owns the property; BQL held.
    let p = unsafe { &*opaque.cast::<StatProp>() };
    let cell = unsafe { p.cell.as_ref() };
    let value = cell.borrow().stat(p.stat);
    // SAFETY: v, name and errp come from QOM's property getter call.
    unsafe {
        if matches!(p.stat, BankStat::Enabled) {
            let mut b = value != 0;
            visit_type_bool(v, name, &mut b, errp.cast());
        } else {
            let mut n = value;
            visit_type_uint32(v, name, &mut n, errp.cast());
        }
    }
}

unsafe extern "C" fn release_stat(_obj: *mut Object, _name: *const c_char, opaque: *mut c_void) {
    // SAFETY: opaque came from Box::into_raw in add_bank_stat_property.
    drop(unsafe { Box::from_raw(opaque.cast::<StatProp>()) });
}
