"""The learning panel's scope choice (issue 20 item 5): each object its own adapters, or one
shared pool for all objects (``xvfb-run -a``; untrained model: mechanics only)."""

from __future__ import annotations

import pytest
from test_auto_accept import idle, learned

pytestmark = pytest.mark.viewer


def test_the_scope_choice_reaches_the_learner(tiny_widget, qtbot):
    viewer, widget = tiny_widget
    panel = widget.learning
    assert panel.scope_combo.currentData() == "object"  # LIT's rule by default
    panel.scope_combo.setCurrentIndex(panel.scope_combo.findData("class"))
    assert panel.control.scope == "class" and "all objects" in panel.status.text()
    learned(viewer, widget, qtbot)
    learner = panel.control.learner
    assert learner.scope == "class"
    assert learner.pool_for(1) is learner.pool_for(2)  # one shared pool
    assert "class" in panel.status.text() or learner.adapter_names()
    # back to per object: the shared learner is closed, its adapters dropped (said so)
    panel.scope_combo.setCurrentIndex(panel.scope_combo.findData("object"))
    idle(qtbot, widget)
    assert panel.control.learner is None and "dropped" in panel.status.text()
