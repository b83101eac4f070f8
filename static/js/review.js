/* The review page. One task's panel is on screen at a time; the next task's panel is
 * fetched ahead (claimed for this reviewer, its face decoded), so that a decision
 * shows the next face at once while the decision is posted in the background. The
 * address follows the face shown (history.pushState), and the back button reloads
 * what the server says about that address. Also: the circumplex picker, change
 * tracking per grain, and the keyboard; the charts are review_charts.js's.
 *
 * Without this script the page works with full page loads: every button posts its
 * form. plotly.js and review_charts.js are loaded before this file (all deferred,
 * so they run in order). */
(function () {
  "use strict";

  const app = document.getElementById("review-app");
  const slot = document.getElementById("review-task");
  if (!app || !slot || !slot.firstElementChild || !window.fetch) {
    return;
  }

  const Charts = window.ReviewCharts; // review_charts.js; null when plotly.js did not load
  const STEP = 0.05;
  const SAME = 0.0005; // the fields show three decimals: closer than this is the same value
  const tokenInput = app.querySelector("input[name=csrfmiddlewaretoken]");
  const csrfToken = tokenInput ? tokenInput.value : "";
  const saveStatus = document.getElementById("save-status");
  const undoForm = document.getElementById("undo-form");
  const keysButton = document.getElementById("keys-button");

  let current = null; // the panel on screen
  let previous = null; // the panel just decided, until its decision is saved
  let ahead = Promise.resolve(null); // the next panel, once fetched
  let aheadCode = ""; // its task, while it waits unseen
  let work = Promise.resolve(); // every request to the server, one after another
  let leaving = false;

  // --- Small helpers ------------------------------------------------------------------

  function number(input) {
    const value = input ? parseFloat(input.value) : NaN;
    return Number.isFinite(value) ? value : null;
  }

  function sameNumber(a, b) {
    return a === b || (a !== null && b !== null && Math.abs(a - b) <= SAME + 1e-9);
  }

  function clamp(value) {
    return Math.min(1, Math.max(-1, Math.round(value * 100) / 100));
  }

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

  function enqueue(step) {
    const result = work.then(step);
    work = result.catch(function () { return null; });
    return result;
  }

  function status(text) {
    if (saveStatus) {
      saveStatus.textContent = text;
      saveStatus.classList.remove("error");
    }
  }

  function showError(text) {
    if (saveStatus) {
      saveStatus.textContent = text;
      saveStatus.classList.add("error");
    }
    const main = document.querySelector("main");
    let list = main.querySelector(".messages");
    if (!list) {
      list = document.createElement("ul");
      list.className = "messages";
      main.insertBefore(list, main.firstChild);
    }
    const item = document.createElement("li");
    item.className = "error";
    item.textContent = text;
    list.replaceChildren(item);
  }

  function clearMessages() {
    const list = document.querySelector("main .messages");
    if (list) {
      list.remove();
    }
  }

  function showProgress(progress) {
    if (!progress) {
      return;
    }
    [["progress-done", progress.done], ["progress-total", progress.total], ["progress-left", progress.left]]
      .forEach(function (pair) {
        const element = document.getElementById(pair[0]);
        if (element) {
          element.textContent = String(pair[1]);
        }
      });
  }

  // --- One task's panel ---------------------------------------------------------------

  const PENDING_WORDS = {
    accept: "accept as is",
    correct: "save your correction",
    reject_image: "reject the image",
    check_va: "wait: check valence-arousal (T or C)",
    labels: "save your labels",
    incomplete: "wait: choose the expression and set valence-arousal",
  };
  function Panel(root) {
    this.root = root;
    this.code = root.dataset.code;
    this.url = root.dataset.url;
    this.aheadUrl = root.dataset.aheadUrl;
    this.image = root.dataset.image || "this face";
    this.title = root.dataset.title || document.title;
    this.blind = root.dataset.blind === "1";
    this.form = root.querySelector("#decision-form");
    this.skipUrl = this.form.dataset.skipUrl;
    const dataElement = root.querySelector("#chart-data");
    this.data = dataElement ? JSON.parse(dataElement.textContent) : null;
    this.face = root.querySelector(".face-large");
    this.timeSpent = root.querySelector("#time-spent");
    this.valence = root.querySelector("#valence");
    this.arousal = root.querySelector("#arousal");
    this.radios = Array.from(root.querySelectorAll('input[name="expression"]'));
    this.auRows = Array.from(root.querySelectorAll(".au-row")).map(function (row) {
      return {
        au: row.dataset.au,
        row: row,
        toggle: row.querySelector(".au-toggle"),
        intensity: row.querySelector("select"),
      };
    });
    this.auPrompt = root.querySelector("#au-prompt");
    this.auDigits = null;
    this.rejectPanel = root.querySelector("#reject-panel");
    this.rejectReason = root.querySelector("#reject-reason");
    this.rejectError = root.querySelector("#reject-error");
    this.pendingLabel = root.querySelector("#pending-action");
    this.note = root.querySelector("#note");
    this.help = root.querySelector("#keys-help");
    this.vaCheck = root.querySelector("#va-check");
    this.vaWarning = root.querySelector("#va-warning");
    this.vaConfirmed = root.querySelector("#va-confirmed");
    this.vaTypical = root.querySelector("#va-typical");
    this.votesChart = root.querySelector("#chart-votes");
    this.vaChart = root.querySelector("#chart-va");
    this.buttons = {
      accept: root.querySelector("#accept-button"),
      correct: root.querySelector("#correct-button"),
      reject_image: root.querySelector("#reject-button"),
    };
    this.startedAt = null;
    this.busy = false;
    this.drawn = false;
    this.machine = this.snapshot();
    this.bind();
    this.refresh();
  }

  Panel.prototype.chosenExpression = function () {
    const checked = this.radios.find(function (r) { return r.checked; });
    return checked ? checked.value : "";
  };

  Panel.prototype.snapshot = function () {
    return {
      expression: this.chosenExpression(),
      valence: number(this.valence),
      arousal: number(this.arousal),
      aus: this.auRows.map(function (r) { return [r.toggle.checked, r.intensity.value]; }),
    };
  };

  Panel.prototype.changedGrains = function (now) {
    const changed = new Set();
    const machine = this.machine;
    if (now.expression !== machine.expression) {
      changed.add("expression");
    }
    if (!sameNumber(now.valence, machine.valence) || !sameNumber(now.arousal, machine.arousal)) {
      changed.add("va");
    }
    const rows = this.auRows;
    now.aus.forEach(function (au, i) {
      const differs = au[0] !== machine.aus[i][0] || (au[0] && au[1] !== machine.aus[i][1]);
      rows[i].row.classList.toggle("changed", differs);
      if (differs) {
        changed.add("aus");
      }
    });
    return changed;
  };

  // The expression changed but valence and arousal are the machine's, for its expression.
  Panel.prototype.vaStale = function (now, changed) {
    return !this.blind && this.machine.valence !== null && now.expression !== "" &&
      changed.has("expression") && !changed.has("va");
  };

  Panel.prototype.pendingAction = function (now, changed) {
    if (this.rejectPanel && this.rejectPanel.open) {
      return "reject_image";
    }
    if (this.blind) {
      return now.expression && now.valence !== null && now.arousal !== null ? "labels" : "incomplete";
    }
    if (this.vaStale(now, changed) && !(this.vaConfirmed && this.vaConfirmed.checked)) {
      return "check_va";
    }
    return changed.size ? "correct" : "accept";
  };

  Panel.prototype.typical = function (expression) {
    const centroids = this.data && this.data.centroids;
    return centroids && centroids[expression] ? centroids[expression] : null;
  };

  // ``redraw`` false: the charts were just drawn with the values as they are.
  Panel.prototype.refresh = function (redraw) {
    const now = this.snapshot();
    const changed = this.changedGrains(now);
    const root = this.root;
    ["expression", "va", "aus"].forEach(function (grain) {
      const section = root.querySelector("#grain-" + grain);
      if (section && !root.classList.contains("blind")) {
        section.classList.toggle("changed", changed.has(grain));
      }
    });
    if (this.vaCheck) {
      const stale = this.vaStale(now, changed);
      const typical = changed.has("expression") ? this.typical(now.expression) : null;
      this.vaCheck.hidden = !stale && !typical;
      this.vaWarning.hidden = !stale;
      this.vaConfirmed.closest("label").hidden = !stale;
      this.vaCheck.classList.toggle("stale", stale && !this.vaConfirmed.checked);
      if (!stale) {
        this.vaConfirmed.checked = false;
      } else {
        this.vaWarning.textContent = "You chose " + now.expression + ": valence and arousal are still the machine's, for " +
          (this.machine.expression || "no expression") + ".";
      }
      this.vaTypical.hidden = !typical;
      if (typical) {
        this.vaTypical.querySelector(".typical-words").textContent =
          "for " + now.expression + ": V " + typical[0].toFixed(2) + ", A " + typical[1].toFixed(2);
      }
    }
    const pending = this.pendingAction(now, changed);
    this.form.dataset.pending = pending;
    if (this.pendingLabel) {
      this.pendingLabel.textContent = PENDING_WORDS[pending];
    }
    const buttons = this.buttons;
    const shown = pending === "labels" ? "correct" : pending;
    Object.keys(buttons).forEach(function (action) {
      if (buttons[action]) {
        buttons[action].classList.toggle("pending", action === shown);
      }
    });
    if (redraw !== false) {
      this.redrawChoice(now);
    }
  };

  Panel.prototype.redrawChoice = function (now) {
    if (this.drawn && Charts) {
      Charts.showChoice(this.votesChart, this.vaChart, this.data, this.machine.expression, now);
    }
  };

  // --- Setting values -----------------------------------------------------------------

  Panel.prototype.setVA = function (valence, arousal) {
    this.valence.value = clamp(valence).toFixed(2);
    this.arousal.value = clamp(arousal).toFixed(2);
    this.refresh();
  };

  Panel.prototype.nudge = function (dValence, dArousal) {
    const valence = number(this.valence);
    const arousal = number(this.arousal);
    this.setVA((valence === null ? 0 : valence) + dValence, (arousal === null ? 0 : arousal) + dArousal);
  };

  Panel.prototype.chooseExpression = function (key) {
    const radio = this.radios.find(function (r) { return r.dataset.key === key; });
    if (radio) {
      radio.checked = true;
      this.refresh();
    }
  };

  Panel.prototype.takeTypical = function () {
    const typical = this.typical(this.chosenExpression());
    if (typical) {
      this.setVA(typical[0], typical[1]);
    }
  };

  Panel.prototype.toggleConfirmed = function () {
    if (this.vaConfirmed && !this.vaConfirmed.closest("label").hidden) {
      this.vaConfirmed.checked = !this.vaConfirmed.checked;
      this.refresh();
    }
  };

  Panel.prototype.focusVA = function () {
    const target = this.vaChart || this.valence;
    if (target) {
      target.focus();
    }
  };

  Panel.prototype.auRow = function (digits) {
    return this.auRows.find(function (r) { return r.au === digits; }) || null;
  };

  Panel.prototype.showAuPrompt = function (message) {
    if (!this.auPrompt) {
      return;
    }
    const digits = this.auDigits;
    this.auPrompt.hidden = digits === null;
    this.auPrompt.querySelector(".au-digits").textContent = message || digits || "_";
    const row = digits ? this.auRow(digits) : null;
    this.auRows.forEach(function (r) { r.row.classList.toggle("targeted", r === row); });
  };

  Panel.prototype.closeAuPrompt = function () {
    this.auDigits = null;
    this.showAuPrompt();
  };

  // Keys while "U" and an AU number are being typed; true when the key was used.
  Panel.prototype.auKey = function (key) {
    if (/^[0-9]$/.test(key)) {
      this.auDigits = (this.auDigits + key).slice(-2);
      this.showAuPrompt();
      return true;
    }
    if (key === "Backspace") {
      this.auDigits = this.auDigits.slice(0, -1);
      this.showAuPrompt();
      return true;
    }
    if (key === "Escape") {
      this.closeAuPrompt();
      return true;
    }
    const row = this.auRow(this.auDigits);
    const level = key.length === 1 ? key.toUpperCase() : "";
    if (key !== "Enter" && key !== "-" && "ABCDE".indexOf(level) === -1) {
      this.closeAuPrompt();
      return false;
    }
    if (!row) {
      this.showAuPrompt(this.auDigits ? "AU" + this.auDigits + " is not in this vocabulary" : "type its number");
      return true;
    }
    if (key === "Enter") {
      row.toggle.checked = !row.toggle.checked;
    } else if (key === "-") {
      row.intensity.value = "";
    } else {
      row.intensity.value = level;
      row.toggle.checked = true;
    }
    this.closeAuPrompt();
    this.refresh();
    return true;
  };

  Panel.prototype.openReject = function () {
    if (!this.rejectPanel || !this.rejectReason) {
      return;
    }
    this.rejectPanel.open = true;
    this.refresh();
    this.rejectReason.focus();
  };

  // --- Events bound once per panel ------------------------------------------------------

  Panel.prototype.bind = function () {
    const panel = this;
    const refresh = function () { panel.refresh(); };
    [this.valence, this.arousal].forEach(function (input) {
      if (!input) {
        return;
      }
      input.addEventListener("input", refresh);
      // A typed value is tidied when the field is left: rounded, clamped, and its partner
      // filled in, since the server takes valence and arousal only together.
      input.addEventListener("change", function () {
        const value = number(input);
        if (value !== null) {
          const other = input === panel.valence ? panel.arousal : panel.valence;
          input.value = clamp(value).toFixed(2);
          if (number(other) === null) {
            other.value = "0.00";
          }
        }
        panel.refresh();
      });
    });
    this.radios.forEach(function (r) { r.addEventListener("change", refresh); });
    this.auRows.forEach(function (r) {
      r.toggle.addEventListener("change", refresh);
      r.intensity.addEventListener("change", function () {
        // An intensity only means something for an AU that is present.
        if (r.intensity.value) {
          r.toggle.checked = true;
        }
        panel.refresh();
      });
    });
    if (this.vaConfirmed) {
      this.vaConfirmed.addEventListener("change", refresh);
      this.vaTypical.addEventListener("click", function () { panel.takeTypical(); });
    }
    if (this.rejectPanel) {
      this.rejectPanel.addEventListener("toggle", refresh);
    }
    if (this.rejectReason) {
      this.rejectReason.addEventListener("change", function () {
        if (panel.rejectError && panel.rejectReason.value) {
          panel.rejectError.hidden = true;
        }
      });
    }
    this.form.addEventListener("submit", function (event) {
      event.preventDefault();
      const submitter = event.submitter;
      const action = submitter && submitter.dataset.action ? submitter.dataset.action : panel.form.dataset.pending;
      panel.decide(action);
    });
  };

  // A click anywhere in the circumplex's plot area sets VA. plotly_click fires only on
  // points, so the position is converted with the axes' own pixel-to-data functions.
  Panel.prototype.clickVA = function (event) {
    const chart = this.vaChart;
    const full = chart._fullLayout;
    const paper = chart.querySelector(".main-svg");
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
    this.setVA(xa.p2d(px), ya.p2d(py));
  };

  // --- Showing and hiding -------------------------------------------------------------

  // Decode the face before the panel is shown, so that it appears with the panel.
  Panel.prototype.preload = function () {
    const face = this.face;
    if (!face) {
      return Promise.resolve(this);
    }
    const image = new Image();
    image.className = face.className;
    image.alt = face.alt;
    image.src = face.getAttribute("src");
    const panel = this;
    return image.decode().then(
      function () { face.replaceWith(image); panel.face = image; return panel; },
      function () { return panel; }
    );
  };

  /* The charts' elements move from panel to panel: plotly then updates what it drew
   * (Plotly.react) instead of drawing anew, several times faster. Each panel keeps an
   * empty stand-in where they go while it is not on screen. */
  const CHARTS = ["votesChart", "vaChart"];
  const pool = {};

  function adopt(name, element) {
    pool[name] = element;
    if (name === "vaChart") {
      element.addEventListener("click", function (event) {
        if (current) {
          current.clickVA(event);
        }
      });
    }
  }

  Panel.prototype.attach = function () {
    slot.replaceChildren(this.root);
    if (this.startedAt === null) {
      this.startedAt = performance.now();
    }
    this.ready();
    const drawing = [];
    if (Charts && this.data) {
      const panel = this;
      CHARTS.forEach(function (name) {
        const spot = panel[name];
        if (!spot) {
          return;
        }
        if (!pool[name]) {
          adopt(name, spot);
        } else if (pool[name] !== spot) {
          spot.replaceWith(pool[name]);
          panel[name] = pool[name];
        }
      });
      this.refresh(false);
      const now = this.snapshot();
      if (this.votesChart) {
        drawing.push(Charts.drawVotes(this.votesChart, this.data, this.machine.expression, now.expression));
      }
      if (this.vaChart) {
        drawing.push(Charts.drawCircumplex(this.vaChart, this.data, now));
      }
      this.drawn = true;
    } else if (this.data) {
      this.root.querySelectorAll(".chart").forEach(function (chart) {
        chart.textContent = "The charts could not be drawn: plotly.js did not load.";
      });
    }
    return Promise.all(drawing);
  };

  Panel.prototype.detach = function () {
    const panel = this;
    CHARTS.forEach(function (name) {
      const chart = panel[name];
      if (chart && chart === pool[name]) {
        const standIn = chart.cloneNode(false);
        chart.replaceWith(standIn);
        panel[name] = standIn;
      }
    });
    this.drawn = false;
    this.closeAuPrompt();
    if (this.help && this.help.open) {
      this.help.close();
    }
    this.root.remove();
  };

  // The panel takes decisions again (none of its own is on its way).
  Panel.prototype.ready = function () {
    this.busy = false;
    this.form.classList.remove("submitting");
  };

  function show(panel, how) {
    if (current && current !== panel) {
      current.detach();
    }
    current = panel;
    const drawn = panel.attach();
    if (how === "push") {
      history.pushState({ code: panel.code }, "", panel.url);
    } else if (how === "replace") {
      history.replaceState({ code: panel.code }, "", panel.url);
    }
    document.title = panel.title;
    if (slot.getBoundingClientRect().top < 0) {
      slot.scrollIntoView();
    }
    panel.root.focus({ preventScroll: true });
    // For whoever measures it (bench/review_latency.py): the face and its controls are
    // on screen once the frame that shows them has been drawn.
    drawn.then(function () {
      requestAnimationFrame(function () {
        setTimeout(function () {
          document.dispatchEvent(new CustomEvent("review:shown", { detail: { code: panel.code, at: performance.now() } }));
        }, 0);
      });
    });
  }

  function build(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const root = template.content.firstElementChild;
    return root && root.classList.contains("review-panel") ? new Panel(root) : null;
  }

  // --- Talking to the server ------------------------------------------------------------

  function post(url, body, accept) {
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { Accept: accept || "application/json", "X-CSRFToken": csrfToken },
      keepalive: true,
    });
  }

  // Claim and fetch the panel of the task after the one on screen (run in the queue).
  function fetchAhead() {
    const panel = current;
    app.dataset.ahead = "loading";
    return post(panel.aheadUrl, new FormData(), "text/html")
      .then(function (response) {
        if (response.status !== 200) {
          return null;
        }
        return response.text().then(function (html) {
          const next = build(html);
          return next ? next.preload() : null;
        });
      })
      .then(function (next) {
        aheadCode = next ? next.code : "";
        app.dataset.ahead = next ? "ready" : "none";
        return next;
      }, function () {
        app.dataset.ahead = "none";
        return null;
      });
  }

  function fetchPanel(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(function (response) {
      if (!response.ok) {
        throw new Error("the server answered " + response.status);
      }
      return response.text().then(function (html) {
        const panel = build(html);
        if (!panel) {
          throw new Error("the server sent no panel");
        }
        return panel.preload();
      });
    });
  }

  // Make the screen agree with the server's word on which task comes next, after a
  // decision on ``decided``.
  function converge(result, decided) {
    const next = result.next;
    if (!next) {
      leaving = true;
      window.location.assign(result.queue);
      return Promise.resolve();
    }
    if (current && next.code === current.code) {
      if (current === decided) {
        decided.ready(); // it stays on screen: its decision was refused
      }
      return Promise.resolve();
    }
    if (previous && next.code === previous.code) {
      const back = previous;
      previous = null;
      show(back, "replace");
      return Promise.resolve();
    }
    return fetchPanel(next.panel).then(
      function (panel) { show(panel, "replace"); },
      function (error) { showError("The next face could not be shown (" + error.message + "): reload the page."); }
    );
  }

  function settle(panel, response) {
    return response.json().then(function (result) {
      showProgress(result.progress);
      if (undoForm) {
        undoForm.hidden = !result.undoable;
      }
      if (result.error) {
        showError(result.error);
      } else {
        clearMessages();
        status(result.saved);
      }
      return converge(result, panel);
    });
  }

  /* Decide the panel on screen: show the next face at once when it is ready, post the
   * decision behind it, then fetch the face after that. Requests go one at a time, in
   * order (``work``): a decision made before the next face has arrived waits for it. */
  function advance(panel, url, body, words) {
    panel.busy = true;
    panel.form.classList.add("submitting");
    status(words + " " + panel.image + "…");
    app.dataset.saving = String(Number(app.dataset.saving || 0) + 1);
    ahead.then(function (next) {
      if (next && current === panel && next.code !== panel.code) {
        aheadCode = "";
        previous = panel;
        show(next, "push");
      }
      enqueue(function () {
        return post(url, body)
          .then(function (response) {
            if (response.status !== 200) {
              throw new Error("the server answered " + response.status);
            }
            return settle(panel, response);
          })
          .catch(function (error) {
            showError(panel.image + " was not saved: " + error.message + ". Reload the page to see where you are.");
            if (previous === panel) {
              show(panel, "replace");
            } else if (current === panel) {
              panel.ready();
            }
          })
          .finally(function () {
            if (previous === panel) {
              previous = null;
            }
            app.dataset.saving = String(Math.max(0, Number(app.dataset.saving) - 1));
          });
      });
      ahead = enqueue(function () {
        return leaving || !current ? null : fetchAhead();
      });
    });
  }

  Panel.prototype.decide = function (action) {
    if (this.busy || current !== this) {
      return;
    }
    if (action === "skip") {
      const body = new FormData();
      body.set("csrfmiddlewaretoken", csrfToken);
      advance(this, this.skipUrl, body, "Skipping");
      return;
    }
    if (action === "check_va") {
      if (this.vaCheck) {
        this.vaCheck.classList.remove("flash");
        void this.vaCheck.offsetWidth;
        this.vaCheck.classList.add("flash");
      }
      (this.vaTypical.hidden ? this.vaConfirmed : this.vaTypical).focus();
      return;
    }
    if (action === "incomplete") {
      (this.chosenExpression() ? this.valence : this.radios[0]).focus();
      return;
    }
    if (action === "labels") {
      action = "correct";
    }
    if (action === "reject_image" && !this.rejectReason.value) {
      if (this.rejectError) {
        this.rejectError.hidden = false;
      }
      this.openReject();
      return;
    }
    if (action === "correct" && this.pendingAction(this.snapshot(), this.changedGrains(this.snapshot())) === "check_va") {
      this.decide("check_va");
      return;
    }
    this.timeSpent.value = String(Math.round(performance.now() - (this.startedAt || performance.now())));
    const body = new FormData(this.form);
    body.set("action", action);
    const words = { accept: "Accepting", correct: "Saving", reject_image: "Rejecting" }[action] || "Saving";
    advance(this, this.form.getAttribute("action"), body, words);
  };

  // --- Keyboard -----------------------------------------------------------------------

  const VA_ARROWS = {
    ArrowLeft: [-STEP, 0],
    ArrowRight: [STEP, 0],
    ArrowUp: [0, STEP],
    ArrowDown: [0, -STEP],
  };

  Panel.prototype.key = function (event) {
    const target = event.target;
    const key = event.key;
    if (this.auDigits !== null && this.auKey(key)) {
      event.preventDefault();
      return;
    }
    if (key === "Escape") {
      if (isTypingField(target) || target === this.vaChart) {
        target.blur();
        this.root.focus({ preventScroll: true });
      } else if (this.rejectPanel && this.rejectPanel.open) {
        this.rejectPanel.open = false;
      }
      return;
    }
    // Arrows change valence-arousal only where it has the focus; elsewhere they scroll.
    if (key in VA_ARROWS && (target === this.vaChart || target === this.valence || target === this.arousal)) {
      if (target === this.vaChart) {
        event.preventDefault();
        this.nudge(VA_ARROWS[key][0], VA_ARROWS[key][1]);
      } else if (key === "ArrowUp" || key === "ArrowDown") {
        event.preventDefault();
        const step = key === "ArrowUp" ? STEP : -STEP;
        this.nudge(target === this.valence ? step : 0, target === this.arousal ? step : 0);
      }
      return;
    }
    if (isTypingField(target)) {
      // Enter in a field would submit the form with its first button (accept), which
      // would drop the correction being typed: it does the pending action instead.
      if (key === "Enter" && target.tagName !== "TEXTAREA") {
        event.preventDefault();
        this.decide(this.form.dataset.pending);
      }
      return;
    }
    if (/^[1-9]$/.test(key)) {
      event.preventDefault();
      this.chooseExpression(key);
      return;
    }
    const actions = {
      Enter: function (panel) {
        if (activatesItself(target)) {
          return false;
        }
        panel.decide(panel.form.dataset.pending);
        return true;
      },
      s: function (panel) {
        const pending = panel.form.dataset.pending;
        panel.decide(pending === "reject_image" ? (panel.changedGrains(panel.snapshot()).size ? "correct" : "accept") : pending);
        return true;
      },
      k: function (panel) { panel.decide("skip"); return true; },
      r: function (panel) { panel.openReject(); return true; },
      u: function (panel) {
        if (!panel.auPrompt) {
          return false;
        }
        panel.auDigits = "";
        panel.showAuPrompt();
        return true;
      },
      v: function (panel) { panel.focusVA(); return true; },
      t: function (panel) { panel.takeTypical(); return true; },
      c: function (panel) { panel.toggleConfirmed(); return true; },
      n: function (panel) {
        if (panel.note) {
          panel.note.focus();
        }
        return true;
      },
      z: function () { undo(); return true; },
      "?": function (panel) { openHelp(panel); return true; },
    };
    const action = actions[key.length === 1 && key !== "?" ? key.toLowerCase() : key];
    if (action && action(this)) {
      event.preventDefault();
    }
  };

  function openHelp(panel) {
    if (panel.help && !panel.help.open) {
      panel.help.showModal();
    }
  }

  function undo() {
    if (undoForm && !undoForm.hidden && !leaving) {
      undoForm.requestSubmit();
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || !current) {
      return;
    }
    if (current.help && current.help.open) {
      return; // the list of keys is a modal dialog: Esc closes it
    }
    current.key(event);
  });

  if (keysButton) {
    keysButton.hidden = false;
    keysButton.addEventListener("click", function () { openHelp(current); });
  }
  // Undo and release act on what the server has: the decisions on their way go first.
  [undoForm, document.getElementById("release-form")].forEach(function (form) {
    if (!form) {
      return;
    }
    form.addEventListener("submit", function (event) {
      if (leaving) {
        return;
      }
      event.preventDefault();
      status(form === undoForm ? "Undoing…" : "Releasing…");
      work.then(function () {
        leaving = true;
        form.requestSubmit();
      });
    });
  });

  // The address is the face on screen's; going back to an earlier one asks the server
  // about it (a decided face says so and leads on to the face held now).
  window.addEventListener("popstate", function () {
    leaving = true;
    window.location.reload();
  });

  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      window.location.reload();
    }
  });

  // The face fetched ahead goes back to the queue when the reviewer leaves the page.
  window.addEventListener("pagehide", function () {
    if (aheadCode && navigator.sendBeacon) {
      const body = new FormData();
      body.set("csrfmiddlewaretoken", csrfToken);
      body.set("task", aheadCode);
      navigator.sendBeacon(app.dataset.releaseUrl, body);
      aheadCode = "";
    }
  });

  app.dataset.saving = "0";
  show(new Panel(slot.firstElementChild), null);
  ahead = enqueue(fetchAhead);
})();
