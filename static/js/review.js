/* The review page: plotly charts of the Monte Carlo samples, the circumplex picker,
 * change tracking per grain, and the keyboard. Plain JS; plotly.js is loaded before
 * this file (both deferred, so they run in document order). */
(function () {
  "use strict";

  const form = document.getElementById("decision-form");
  const dataElement = document.getElementById("chart-data");
  if (!form || !dataElement) {
    return;
  }
  const data = JSON.parse(dataElement.textContent);
  const startedAt = performance.now();
  const STEP = 0.05;
  const COLORS = {
    ink: "#1d2330",
    muted: "#9aa3b2",
    accent: "#2f5bd3",
    choice: "#d9480f",
    centroid: "#5b6475",
  };
  const CONFIG = { responsive: true, displayModeBar: false };

  const actionField = document.getElementById("action-field");
  const timeSpent = document.getElementById("time-spent");
  const valenceInput = document.getElementById("valence");
  const arousalInput = document.getElementById("arousal");
  const radios = Array.from(form.querySelectorAll('input[name="expression"]'));
  const auRows = Array.from(form.querySelectorAll(".au-row")).map(function (row) {
    return { row: row, toggle: row.querySelector(".au-toggle"), intensity: row.querySelector("select") };
  });
  const rejectPanel = document.getElementById("reject-panel");
  const rejectReason = document.getElementById("reject-reason");
  const rejectError = document.getElementById("reject-error");
  const pendingLabel = document.getElementById("pending-action");
  const undoForm = document.getElementById("undo-form");
  const skipButton = document.getElementById("skip-button");
  const buttons = {
    accept: document.getElementById("accept-button"),
    correct: document.getElementById("correct-button"),
    reject_image: document.getElementById("reject-button"),
  };
  const PENDING_WORDS = {
    accept: "accept as is",
    correct: "save your correction",
    reject_image: "reject the image",
  };

  let submitting = false;

  // --- Values and what changed --------------------------------------------------

  function chosenExpression() {
    const checked = radios.find(function (r) { return r.checked; });
    return checked ? checked.value : "";
  }

  function number(input) {
    const value = parseFloat(input.value);
    return Number.isFinite(value) ? value : null;
  }

  function snapshot() {
    return {
      expression: chosenExpression(),
      valence: number(valenceInput),
      arousal: number(arousalInput),
      aus: auRows.map(function (r) { return [r.toggle.checked, r.intensity.value]; }),
    };
  }

  const machine = snapshot();

  function sameNumber(a, b) {
    return a === b || (a !== null && b !== null && Math.abs(a - b) < 0.005);
  }

  function changedGrains(now) {
    const changed = new Set();
    if (now.expression !== machine.expression) {
      changed.add("expression");
    }
    if (!sameNumber(now.valence, machine.valence) || !sameNumber(now.arousal, machine.arousal)) {
      changed.add("va");
    }
    now.aus.forEach(function (au, i) {
      const differs = au[0] !== machine.aus[i][0] || (au[0] && au[1] !== machine.aus[i][1]);
      auRows[i].row.classList.toggle("changed", differs);
      if (differs) {
        changed.add("aus");
      }
    });
    return changed;
  }

  function pendingAction(changed) {
    if (rejectPanel && rejectPanel.open) {
      return "reject_image";
    }
    return changed.size ? "correct" : "accept";
  }

  function refresh() {
    const now = snapshot();
    const changed = changedGrains(now);
    ["expression", "va", "aus"].forEach(function (grain) {
      const section = document.getElementById("grain-" + grain);
      if (section) {
        section.classList.toggle("changed", changed.has(grain));
      }
    });
    const pending = pendingAction(changed);
    form.dataset.pending = pending;
    if (pendingLabel) {
      pendingLabel.textContent = PENDING_WORDS[pending];
    }
    Object.keys(buttons).forEach(function (action) {
      if (buttons[action]) {
        buttons[action].classList.toggle("pending", action === pending);
      }
    });
    redrawChoice(now);
  }

  // --- Setting values -------------------------------------------------------------

  function clamp(value) {
    return Math.min(1, Math.max(-1, Math.round(value * 100) / 100));
  }

  function setVA(valence, arousal) {
    valenceInput.value = clamp(valence).toFixed(2);
    arousalInput.value = clamp(arousal).toFixed(2);
    refresh();
  }

  function nudge(dValence, dArousal) {
    const valence = number(valenceInput);
    const arousal = number(arousalInput);
    setVA((valence === null ? 0 : valence) + dValence, (arousal === null ? 0 : arousal) + dArousal);
  }

  function chooseExpression(key) {
    const radio = radios.find(function (r) { return r.dataset.key === key; });
    if (radio) {
      radio.checked = true;
      refresh();
    }
  }

  // A typed value is tidied when the field is left: rounded, clamped, and its partner
  // filled in, since the server takes valence and arousal only together.
  [valenceInput, arousalInput].forEach(function (input) {
    input.addEventListener("input", refresh);
    input.addEventListener("change", function () {
      const value = number(input);
      if (value === null) {
        refresh();
        return;
      }
      const other = input === valenceInput ? arousalInput : valenceInput;
      input.value = clamp(value).toFixed(2);
      if (number(other) === null) {
        other.value = "0.00";
      }
      refresh();
    });
  });
  radios.forEach(function (r) { r.addEventListener("change", refresh); });
  auRows.forEach(function (r) {
    r.toggle.addEventListener("change", refresh);
    r.intensity.addEventListener("change", function () {
      // An intensity only means something for an AU that is present.
      if (r.intensity.value) {
        r.toggle.checked = true;
      }
      refresh();
    });
  });
  if (rejectPanel) {
    rejectPanel.addEventListener("toggle", refresh);
  }
  if (rejectReason) {
    rejectReason.addEventListener("change", function () {
      if (rejectError && rejectReason.value) {
        rejectError.hidden = true;
      }
    });
  }

  // --- Submitting -----------------------------------------------------------------

  function openReject() {
    if (!rejectPanel || !rejectReason) {
      return;
    }
    rejectPanel.open = true;
    refresh();
    rejectReason.focus();
  }

  function submitWith(button) {
    if (button && !submitting) {
      form.requestSubmit(button);
    }
  }

  function submitPending() {
    submitWith(buttons[form.dataset.pending || "accept"]);
  }

  form.addEventListener("submit", function (event) {
    if (submitting) {
      event.preventDefault();
      return;
    }
    const submitter = event.submitter;
    if (submitter && submitter.dataset.action) {
      actionField.value = submitter.dataset.action;
    }
    const skipping = submitter === skipButton;
    if (!skipping && actionField.value === "reject_image" && !rejectReason.value) {
      event.preventDefault();
      if (rejectError) {
        rejectError.hidden = false;
      }
      openReject();
      return;
    }
    timeSpent.value = String(Math.round(performance.now() - startedAt));
    submitting = true;
    form.classList.add("submitting");
  });

  // A page restored by the back button must accept keys and clicks again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      submitting = false;
      form.classList.remove("submitting");
    }
  });

  // --- Keyboard -------------------------------------------------------------------

  function isTypingField(element) {
    if (!element || !element.tagName) {
      return false;
    }
    const tag = element.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") {
      return true;
    }
    if (tag === "INPUT") {
      return ["checkbox", "radio", "button", "submit"].indexOf(element.type) === -1;
    }
    return element.isContentEditable;
  }

  function activatesItself(element) {
    // Enter on a focused button, link or summary does what that element says.
    return element && ["BUTTON", "A", "SUMMARY"].indexOf(element.tagName) !== -1;
  }

  const ARROWS = {
    ArrowLeft: [-STEP, 0],
    ArrowRight: [STEP, 0],
    ArrowUp: [0, STEP],
    ArrowDown: [0, -STEP],
  };

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const target = event.target;
    if (event.key === "Escape") {
      if (isTypingField(target)) {
        target.blur();
      } else if (rejectPanel && rejectPanel.open) {
        rejectPanel.open = false;
      }
      return;
    }
    if (isTypingField(target)) {
      // Enter in a field would submit the form with its first button (accept), which
      // would drop the correction being typed: it does the pending action instead.
      if (event.key === "Enter" && target.tagName !== "TEXTAREA") {
        event.preventDefault();
        submitPending();
      }
      return;
    }
    if (event.key in ARROWS) {
      event.preventDefault();
      nudge(ARROWS[event.key][0], ARROWS[event.key][1]);
      return;
    }
    if (/^[1-9]$/.test(event.key)) {
      event.preventDefault();
      chooseExpression(event.key);
      return;
    }
    switch (event.key) {
      case "Enter":
        if (!activatesItself(target)) {
          event.preventDefault();
          submitPending();
        }
        break;
      case "s":
      case "S":
        event.preventDefault();
        submitWith(buttons.correct);
        break;
      case "k":
      case "K":
        event.preventDefault();
        submitWith(skipButton);
        break;
      case "r":
      case "R":
        event.preventDefault();
        openReject();
        break;
      case "u":
      case "U":
        if (undoForm && !submitting) {
          event.preventDefault();
          submitting = true;
          undoForm.requestSubmit();
        }
        break;
      default:
        break;
    }
  });

  // --- Charts ---------------------------------------------------------------------

  const Plotly = window.Plotly;
  const votesChart = document.getElementById("chart-votes");
  const vaChart = document.getElementById("chart-va");
  const ausChart = document.getElementById("chart-aus");
  const CHOICE_TRACE = 3;
  let vaDrawn = false;
  let votesDrawn = false;

  function layout(extra) {
    return Object.assign(
      {
        margin: { l: 44, r: 12, t: 8, b: 36 },
        font: { family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 12, color: COLORS.ink },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "rgba(0,0,0,0)",
        showlegend: false,
        dragmode: false,
        hoverlabel: { font: { size: 12 } },
      },
      extra
    );
  }

  function voteColors(chosen) {
    return Object.keys(data.votes).map(function (e) {
      if (e === chosen && e !== machine.expression) {
        return COLORS.choice;
      }
      return e === machine.expression ? COLORS.accent : COLORS.muted;
    });
  }

  function drawVotes() {
    const names = Object.keys(data.votes);
    Plotly.newPlot(
      votesChart,
      [{
        type: "bar",
        x: names,
        y: names.map(function (e) { return data.votes[e]; }),
        marker: { color: voteColors(machine.expression) },
        hovertemplate: "%{x}: %{y} sample(s)<extra></extra>",
      }],
      layout({
        xaxis: { fixedrange: true, tickfont: { size: 11 }, tickangle: -30, automargin: true },
        yaxis: { fixedrange: true, title: { text: "samples" }, rangemode: "tozero", tickformat: "d" },
      }),
      CONFIG
    );
    votesDrawn = true;
  }

  function drawCircumplex() {
    const samples = data.va_samples || [];
    const names = Object.keys(data.centroids || {});
    const aggregate = data.va_aggregate;
    const axis = {
      range: [-1.08, 1.08],
      fixedrange: true,
      zeroline: true,
      zerolinecolor: "#c4cad6",
      gridcolor: "#eef0f5",
      dtick: 0.5,
      constrain: "domain",
    };
    Plotly.newPlot(
      vaChart,
      [
        {
          name: "samples",
          type: "scatter",
          mode: "markers",
          x: samples.map(function (s) { return s[0]; }),
          y: samples.map(function (s) { return s[1]; }),
          marker: { size: 7, color: "rgba(47,91,211,0.35)", line: { width: 0 } },
          hovertemplate: "sample: V %{x:.2f}, A %{y:.2f}<extra></extra>",
        },
        {
          name: "knowledge centroids",
          type: "scatter",
          mode: "markers+text",
          x: names.map(function (e) { return data.centroids[e][0]; }),
          y: names.map(function (e) { return data.centroids[e][1]; }),
          text: names,
          textposition: "top center",
          textfont: { size: 10, color: COLORS.centroid },
          marker: { size: 7, symbol: "diamond-open", color: COLORS.centroid },
          hovertemplate: "%{text} (knowledge): V %{x:.2f}, A %{y:.2f}<extra></extra>",
        },
        {
          name: "aggregate",
          type: "scatter",
          mode: "markers",
          x: aggregate ? [aggregate[0]] : [],
          y: aggregate ? [aggregate[1]] : [],
          marker: { size: 15, symbol: "x-thin-open", color: COLORS.accent, line: { width: 3, color: COLORS.accent } },
          hovertemplate: "machine aggregate: V %{x:.2f}, A %{y:.2f}<extra></extra>",
        },
        {
          name: "your choice",
          type: "scatter",
          mode: "markers",
          x: [],
          y: [],
          marker: { size: 18, symbol: "circle-open", color: COLORS.choice, line: { width: 3, color: COLORS.choice } },
          hovertemplate: "your choice: V %{x:.2f}, A %{y:.2f}<extra></extra>",
        },
      ],
      layout({
        margin: { l: 48, r: 12, t: 8, b: 44 },
        xaxis: Object.assign({ title: { text: "valence" } }, axis),
        yaxis: Object.assign({ title: { text: "arousal" }, scaleanchor: "x", scaleratio: 1 }, axis),
        shapes: [{
          type: "circle",
          xref: "x",
          yref: "y",
          x0: -1,
          y0: -1,
          x1: 1,
          y1: 1,
          line: { color: "#8790a3", width: 1.5 },
          layer: "below",
        }],
        hovermode: "closest",
      }),
      CONFIG
    );
    vaDrawn = true;
    // plotly_click fires only on points; a click anywhere in the plot area sets VA,
    // so the position is converted with the axes' own pixel-to-data functions.
    vaChart.addEventListener("click", function (event) {
      const full = vaChart._fullLayout;
      const paper = vaChart.querySelector(".main-svg");
      if (!full || !paper) {
        return;
      }
      const box = paper.getBoundingClientRect();
      const xa = full.xaxis;
      const ya = full.yaxis;
      const px = event.clientX - box.left - xa._offset;
      const py = event.clientY - box.top - ya._offset;
      if (px < 0 || px > xa._length || py < 0 || py > ya._length) {
        return;
      }
      setVA(xa.p2d(px), ya.p2d(py));
    });
  }

  function drawAus() {
    const rows = data.au_rates || [];
    const present = new Map(auRows.map(function (r, i) { return [r.toggle.name, machine.aus[i][0]]; }));
    ausChart.style.height = 40 + 19 * rows.length + "px";
    Plotly.newPlot(
      ausChart,
      [{
        type: "bar",
        orientation: "h",
        x: rows.map(function (r) { return r.rate; }),
        y: rows.map(function (r) { return "AU" + r.au + " " + r.name; }),
        marker: {
          color: rows.map(function (r) { return present.get("au_" + r.au) ? COLORS.accent : COLORS.muted; }),
        },
        hovertemplate: "%{y}: active in %{x:.0%} of samples<extra></extra>",
      }],
      layout({
        margin: { l: 8, r: 12, t: 8, b: 32 },
        xaxis: { range: [0, 1], dtick: 0.25, fixedrange: true, tickformat: ".0%", title: { text: "activation rate" } },
        yaxis: { autorange: "reversed", fixedrange: true, automargin: true, tickfont: { size: 11 } },
        bargap: 0.25,
        shapes: [{
          type: "line", xref: "x", yref: "paper", x0: 0.5, x1: 0.5, y0: 0, y1: 1,
          line: { color: "#8790a3", width: 1, dash: "dot" },
        }],
      }),
      CONFIG
    );
  }

  function redrawChoice(now) {
    if (vaDrawn) {
      const has = now.valence !== null && now.arousal !== null;
      Plotly.restyle(vaChart, { x: [has ? [now.valence] : []], y: [has ? [now.arousal] : []] }, [CHOICE_TRACE]);
    }
    if (votesDrawn) {
      Plotly.restyle(votesChart, { "marker.color": [voteColors(now.expression)] }, [0]);
    }
  }

  if (Plotly) {
    if (votesChart) {
      drawVotes();
    }
    if (vaChart) {
      drawCircumplex();
    }
    if (ausChart) {
      drawAus();
    }
  } else {
    document.querySelectorAll(".chart").forEach(function (chart) {
      chart.textContent = "The charts could not be drawn: plotly.js did not load.";
    });
  }

  refresh();
})();
