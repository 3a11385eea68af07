// SPDX-License-Identifier: GPL-2.0-or-later

//! The few QEMU and libc functions this device needs that QEMU's Rust crates
//! do not wrap. All `unsafe` of the device lives here.

use std::{
    ffi::{c_char, c_int, c_ulong, c_void, CStr, CString},
    ptr::{addr_of, NonNull},
};

use bql::BqlRefCell;
use qom::bindings::{
    object_class_property_set_description, object_property_add, Object, ObjectClass, Visitor,
};

use crate::device::{BankStat, BankState};

/// `CPUState`, only ever handled by pointer.
#[repr(C)]
pub struct CPUState {
    _private: [u8; 0],
}

/// `run_on_cpu_data` from `hw/core/cpu.h`.
#[repr(C)]
#[derive(Clone, Copy)]
union RunOnCpuData {
    host_int: c_int,
    host_ulong: c_ulong,
    host_ptr: *mut c_void,
    target_ptr: u64,
}

type RunOnCpuFunc = unsafe extern "C" fn(cpu: *mut CPUState, data: RunOnCpuData);

/// `VcpuStallStage` from the QAPI schema (qapi/run-state.json).
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(dead_code)] // values are only created by conversion from `act`
pub enum VcpuStallStage {
    Warning = 0,
    Action = 1,
}

extern "C" {
    fn qemu_get_cpu(index: c_int) -> *mut CPUState;
    fn async_run_on_cpu(cpu: *mut CPUState, func: RunOnCpuFunc, data: RunOnCpuData);
    fn watchdog_perform_action();
    fn qapi_event_send_vcpu_stall(
        qom_path: *const c_char,
        cpu_index: i64,
        budget_ms: u64,
        stage: VcpuStallStage,
    );
    fn object_get_canonical_path(obj: *const Object) -> *mut c_char;
    fn g_free(ptr: *mut c_void);
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
}

/// Number of vCPUs the machine has created (indices 0..n).
pub fn cpu_count() -> u32 {
    let mut n: u32 = 0;
    // SAFETY: qemu_get_cpu only walks the CPU list (under the BQL, held by
    // every caller of realize) and returns NULL past the last CPU.
    while n < i32::MAX as u32 && !unsafe { qemu_get_cpu(n as c_int) }.is_null() {
        n += 1;
    }
    n
}

/// Asks vCPU `index`'s thread to record its CPU-time clock in `cell`.
///
/// The work item runs on that thread, under the BQL, before the vCPU next
/// executes guest code; `cell` must outlive it (banks live as long as the
/// device, which cannot be unplugged).
pub fn learn_vcpu_clock(index: u32, cell: &BqlRefCell<BankState>) {
    // SAFETY: see cpu_count().
    let cpu = unsafe { qemu_get_cpu(index as c_int) };
    if cpu.is_null() {
        return;
    }
    let data = RunOnCpuData {
        host_ptr: NonNull::from(cell).as_ptr().cast(),
    };
    // SAFETY: cpu is a live CPU; learn_clock_on_vcpu matches run_on_cpu_func
    // and only dereferences data as the cell passed here.
    unsafe { async_run_on_cpu(cpu, learn_clock_on_vcpu, data) };
}

unsafe extern "C" fn learn_clock_on_vcpu(_cpu: *mut CPUState, data: RunOnCpuData) {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is always valid for the calling thread and id
    // is a valid out pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    // SAFETY: learn_vcpu_clock passed a pointer to a BqlRefCell<BankState>
    // that outlives the work item; the BQL is held here.
    let cell = unsafe { &*data.host_ptr.cast::<BqlRefCell<BankState>>() };
    if rc == 0 {
        cell.borrow_mut().set_cpu_clock(id);
    }
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

/// Sends the `VCPU_STALL` QMP event.
pub fn send_stall_event(obj: *const Object, cpu: u32, budget_ms: u64, act: bool) {
    let stage = if act {
        VcpuStallStage::Action
    } else {
        VcpuStallStage::Warning
    };
    // SAFETY: obj is the live device; the returned string is owned by us and
    // freed with g_free after the event is sent (which copies it).
    unsafe {
        let path = object_get_canonical_path(obj);
        qapi_event_send_vcpu_stall(path, i64::from(cpu), budget_ms, stage);
        g_free(path.cast());
    }
}

/// Takes the action configured with `-action watchdog=` / `watchdog-set-action`.
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
        unsafe { object_class_property_set_description(oc, name.as_ptr(), text.as_ptr()) };
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
