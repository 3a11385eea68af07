/*
 * vCPU stall detector: what the Rust device needs to know about vCPUs and
 * the run state that QEMU keeps in C only (a thread-local variable, fields
 * of CPUState, globals behind macros). See rust/hw/misc/vcpu_stall_detector.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "hw/core/cpu.h"
#include "hw/nmi.h"
#include "qom/object.h"
#include "system/replay.h"
#include "system/watchdog.h"
#include "hw/misc/vcpu_stall_detector.h"

int vcpu_stall_detector_current_cpu(void)
{
    return current_cpu ? current_cpu->cpu_index : -1;
}

int vcpu_stall_detector_cpu_thread_id(int cpu_index)
{
    CPUState *cpu = qemu_get_cpu(cpu_index);

    /* thread_id is live once the vCPU thread signalled creation */
    return cpu && cpu->created ? cpu->thread_id : 0;
}

bool vcpu_stall_detector_replay_active(void)
{
    return replay_mode != REPLAY_MODE_NONE;
}

bool vcpu_stall_detector_action_is_nmi(void)
{
    return get_watchdog_action() == WATCHDOG_ACTION_INJECT_NMI;
}

static int find_nmi(Object *obj, void *opaque)
{
    return object_dynamic_cast(obj, TYPE_NMI) != NULL;
}

bool vcpu_stall_detector_machine_has_nmi(void)
{
    return object_child_foreach_recursive(object_get_root(), find_nmi, NULL);
}
