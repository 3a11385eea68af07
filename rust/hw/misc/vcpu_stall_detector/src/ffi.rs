// SPDX-License-Identifier: GPL-2.0-or-later

//! Safe wrappers of the C functions the device calls (bindgen output in
//! [`bindings`](crate::bindings)) and of libc's thread CPU clocks. The
//! device code calls these; it has no FFI of its own.

use std::{
    ffi::{c_char, c_void, CStr, CString},
    ptr::addr_of,
};

use qom::{
    bindings::{object_class_property_set_description, object_property_add, Object, ObjectClass},
    ObjectType,
};
use vigil_core::stall::Report;

use crate::bindings::{
    qapi_event_send_vcpu_stall, vcpu_stall_detector_action_is_nmi,
    vcpu_stall_detector_cpu_thread_id, vcpu_stall_detector_current_cpu,
    vcpu_stall_detector_machine_has_nmi, vcpu_stall_detector_replay_active, visit_type_bool,
    visit_type_uint32, warn_report, watchdog_perform_action, Error, VcpuStallStage, Visitor,
};

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
    let index = i32::try_from(index).ok()?;
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

/// Sends the `VCPU_STALL` QMP event for `dev` (throttled by QEMU's monitor).
pub fn send_stall_event<T: ObjectType>(
    dev: &T,
    cpu: u32,
    bank: u32,
    budget_ms: u64,
    report: Report,
) {
    let stage = match report {
        Report::Warning => VcpuStallStage::VCPU_STALL_STAGE_WARNING,
        Report::Action => VcpuStallStage::VCPU_STALL_STAGE_ACTION,
        Report::Ongoing => VcpuStallStage::VCPU_STALL_STAGE_ONGOING,
    };
    // SAFETY: dev is a live object; the path is a new string owned by us,
    // freed after the event is sent (which copies it).
    unsafe {
        let path = qom::bindings::object_get_canonical_path(dev.as_object_ptr());
        qapi_event_send_vcpu_stall(path, i64::from(cpu), i64::from(bank), budget_ms, stage);
        glib_sys::g_free(path.cast());
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

/// The QOM type of a read-only property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropKind {
    Bool,
    U32,
}

/// A read-only property's getter: `read(owner, arg)`.
struct ReadOnlyProp<T> {
    read: fn(&T, u32) -> u32,
    arg: u32,
    kind: PropKind,
}

/// Adds the read-only QOM property `name` to `owner`, whose value is
/// `read(owner, arg)` (a bool property shows whether it is non-zero).
pub fn add_readonly_property<T: ObjectType>(
    owner: &T,
    name: &str,
    kind: PropKind,
    read: fn(&T, u32) -> u32,
    arg: u32,
) {
    let opaque = Box::into_raw(Box::new(ReadOnlyProp { read, arg, kind }));
    let name = CString::new(name).unwrap_or_default();
    let ty = match kind {
        PropKind::Bool => c"bool",
        PropKind::U32 => c"uint32",
    };
    // SAFETY: owner is a live object; QOM copies the name and type; the
    // getter is only called with owner, and release_readonly frees opaque
    // when the property goes away.
    unsafe {
        object_property_add(
            owner.as_object_ptr().cast_mut(),
            name.as_ptr(),
            ty.as_ptr(),
            Some(get_readonly::<T>),
            None,
            Some(release_readonly::<T>),
            opaque.cast(),
        );
    }
}

unsafe extern "C" fn get_readonly<T: ObjectType>(
    obj: *mut Object,
    v: *mut Visitor,
    name: *const c_char,
    opaque: *mut c_void,
    errp: *mut *mut Error,
) {
    // SAFETY: opaque is the ReadOnlyProp<T> of add_readonly_property, and
    // obj the object it was added to, a T (ObjectType: its Object is first);
    // QOM calls getters with the BQL held.
    let (p, owner) = unsafe { (&*opaque.cast::<ReadOnlyProp<T>>(), &*obj.cast::<T>()) };
    let value = (p.read)(owner, p.arg);
    // SAFETY: v, name and errp come from QOM's call of the getter.
    unsafe {
        match p.kind {
            PropKind::Bool => {
                let mut b = value != 0;
                visit_type_bool(v, name, &mut b, errp);
            }
            PropKind::U32 => {
                let mut n = value;
                visit_type_uint32(v, name, &mut n, errp);
            }
        }
    }
}

unsafe extern "C" fn release_readonly<T>(
    _obj: *mut Object,
    _name: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: opaque came from Box::into_raw in add_readonly_property.
    drop(unsafe { Box::from_raw(opaque.cast::<ReadOnlyProp<T>>()) });
}
