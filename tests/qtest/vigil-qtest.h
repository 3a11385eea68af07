/*
 * Helpers shared by vigil's qtests
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_QTEST_VIGIL_QTEST_H
#define TESTS_QTEST_VIGIL_QTEST_H

#include "libqtest.h"
#include "qobject/qdict.h"

/* The event @name if it arrived so far (a QMP round trip flushes), or NULL */
static inline QDict *vigil_event_so_far(QTestState *qts, const char *name)
{
    qtest_qmp_assert_success(qts, "{'execute': 'query-status'}");
    return qtest_qmp_event_ref(qts, name);
}

/* Waits for @event and checks its "action" member */
static inline void vigil_expect_action(QTestState *qts, const char *event,
                                       const char *action)
{
    QDict *ev = qtest_qmp_eventwait_ref(qts, event);

    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "action"), ==,
                    action);
    qobject_unref(ev);
}

#endif
