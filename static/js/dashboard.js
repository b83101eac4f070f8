/* The dashboard and comparison pages: plotly charts drawn from the data the server
 * put in a json_script element. Plain JS; plotly.js is loaded before this file
 * (both deferred, so they run in document order). */
(function () {
  "use strict";

  const COLORS = {
    ink: "#1d2330",
    muted: "#9aa3b2",
    accent: "#2f5bd3",
    warn: "#b45309",
    good: "#15803d",
    bad: "#b91c1c",
    line: "#d9dee7",
  };
  const SIDE_COLORS = [COLORS.accent, COLORS.warn];
  const EXPRESSION_COLORS = {
    neutral: "#7c8596",
    happiness: "#e0a100",
    sadness: "#2f5bd3",
    surprise: "#8b5cf6",
    fear: "#0f766e",
    disgust: "#65a30d",
    anger: "#b91c1c",
    contempt: "#c2410c",
  };
  const CONFIG = { responsive: true, displayModeBar: false };

  function layout(extra) {
    return Object.assign(
      {
        margin: { l: 48, r: 16, t: 8, b: 40 },
        font: { family: "system-ui, sans-serif", size: 12, color: COLORS.ink },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#fff",
        showlegend: false,
        bargap: 0.05,
      },
      extra
    );
  }

  function draw(id, traces, extraLayout) {
    const element = document.getElementById(id);
    if (element) {
      Plotly.newPlot(element, traces, layout(extraLayout), CONFIG);
    }
  }

  function thresholdLine(threshold, axis) {
    const line = { type: "line", line: { color: COLORS.bad, width: 1.5, dash: "dash" } };
    if (axis === "x") {
      return Object.assign(line, { x0: threshold, x1: threshold, y0: 0, y1: 1, yref: "paper" });
    }
    return Object.assign(line, { y0: threshold, y1: threshold, x0: 0, x1: 1, xref: "paper" });
  }

  const DIAGONAL = {
    type: "scatter", mode: "lines", x: [0, 1], y: [0, 1], hoverinfo: "skip",
    line: { color: COLORS.muted, dash: "dot", width: 1 }, name: "perfect calibration",
  };
  const UNIT_AXES = {
    xaxis: { range: [-0.02, 1.02], title: { text: "confidence" }, tickformat: ".1f" },
    yaxis: { range: [0, 1.02], title: { text: "agreement" }, tickformat: ".0%" },
  };

  // --- Run dashboard -------------------------------------------------------------

  function progressChart(progress) {
    const parts = [
      ["auto-accepted", progress.auto_accepted, COLORS.good],
      ["reviewed", progress.reviewed, COLORS.accent],
      ["awaiting review", progress.remaining, COLORS.warn],
    ];
    draw(
      "chart-progress",
      parts.map(function (p) {
        return {
          type: "bar", orientation: "h", name: p[0], x: [p[1]], y: ["annotations"],
          marker: { color: p[2] }, hovertemplate: p[0] + ": %{x}<extra></extra>",
        };
      }),
      {
        barmode: "stack", showlegend: true, legend: { orientation: "h", y: -0.35 },
        margin: { l: 90, r: 16, t: 8, b: 30 }, xaxis: { tickformat: "d", rangemode: "tozero" },
      }
    );
  }

  function confidenceCharts(data) {
    const width = 1 / data.bins;
    const centers = data.histograms.overall.map(function (_, i) { return (i + 0.5) * width; });
    const titles = { expression: "expression", va: "valence-arousal", aus: "action units", overall: "overall" };
    Object.keys(titles).forEach(function (grain) {
      draw(
        "chart-conf-" + grain,
        [{
          type: "bar", x: centers, y: data.histograms[grain], width: width,
          marker: { color: grain === "overall" ? COLORS.ink : COLORS.accent },
          hovertemplate: "confidence %{x:.2f}: %{y} annotations<extra></extra>",
        }],
        {
          xaxis: { range: [0, 1], title: { text: titles[grain] + " confidence" } },
          yaxis: { rangemode: "tozero", tickformat: "d", title: { text: "annotations" } },
          shapes: [thresholdLine(data.threshold, "x")],
        }
      );
    });
  }

  function expressionChart(expressions) {
    draw(
      "chart-expressions",
      [{
        type: "bar",
        x: expressions.map(function (e) { return e[0]; }),
        y: expressions.map(function (e) { return e[1]; }),
        marker: { color: expressions.map(function (e) { return EXPRESSION_COLORS[e[0]] || COLORS.muted; }) },
        hovertemplate: "%{x}: %{y}<extra></extra>",
      }],
      { yaxis: { rangemode: "tozero", tickformat: "d", title: { text: "annotations" } }, xaxis: { automargin: true } }
    );
  }

  function vaChart(points) {
    const groups = {};
    points.forEach(function (p) {
      const name = p[2] || "no expression";
      (groups[name] = groups[name] || []).push(p);
    });
    const traces = Object.keys(groups).sort().map(function (name) {
      return {
        type: "scatter",
        mode: "markers", name: name,
        x: groups[name].map(function (p) { return p[0]; }),
        y: groups[name].map(function (p) { return p[1]; }),
        marker: { size: 6, opacity: 0.6, color: EXPRESSION_COLORS[name] || COLORS.muted },
        hovertemplate: name + ": V %{x:.2f}, A %{y:.2f}<extra></extra>",
      };
    });
    draw("chart-va", traces, {
      showlegend: true, legend: { orientation: "v", x: 1.02, y: 1 },
      margin: { l: 48, r: 8, t: 8, b: 40 },
      xaxis: { range: [-1.05, 1.05], zeroline: true, title: { text: "valence" } },
      yaxis: { range: [-1.05, 1.05], zeroline: true, title: { text: "arousal" }, scaleanchor: "x" },
      shapes: [{ type: "circle", x0: -1, y0: -1, x1: 1, y1: 1, line: { color: COLORS.line } }],
    });
  }

  function auChart(rows) {
    const names = rows.map(function (r) { return "AU" + r.au; });
    const text = rows.map(function (r) { return r.name; });
    draw(
      "chart-aus",
      [
        {
          type: "bar", name: "observed", x: names, y: rows.map(function (r) { return r.observed; }),
          text: text, textposition: "none", marker: { color: COLORS.accent },
          hovertemplate: "%{x} %{text}: present in %{y:.0%}<extra>observed</extra>",
        },
        {
          type: "bar", name: "knowledge prior", x: names, y: rows.map(function (r) { return r.prior; }),
          text: text, textposition: "none", marker: { color: COLORS.muted },
          hovertemplate: "%{x} %{text}: prior %{y:.0%}<extra>knowledge</extra>",
        },
      ],
      {
        barmode: "group", bargap: 0.25, showlegend: true, legend: { orientation: "h", y: 1.12 },
        yaxis: { tickformat: ".0%", rangemode: "tozero", title: { text: "share of annotations" } },
      }
    );
  }

  // The bucket's width in milliseconds, from its name ("10-second", "1-hour").
  const UNIT_MS = { second: 1000, minute: 60000, hour: 3600000, day: 86400000 };
  function bucketMs(bucket) {
    const match = /^(\d+)-(second|minute|hour|day)$/.exec(bucket);
    return match ? Number(match[1]) * UNIT_MS[match[2]] : 60000;
  }

  // Plotly reads "2026-12-06T00:31:10+00:00" as the time written, offset aside;
  // the server sends local times, so the axis shows the local clock.
  function timeOf(text) {
    return Date.parse(text.slice(0, 19) + "Z");
  }

  function iso(ms) {
    return new Date(ms).toISOString().slice(0, 19);
  }

  // Ticks at whole buckets, at most about six of them, labelled only as finely as
  // the bucket: never one time repeated along the axis.
  function timeAxis(points, width) {
    const first = timeOf(points[0].at);
    const last = timeOf(points[points.length - 1].at);
    const buckets = Math.round((last - first) / width) + 1;
    const step = Math.max(1, Math.ceil(buckets / 6)) * width;
    const days = new Date(first).toISOString().slice(0, 10) !== new Date(last).toISOString().slice(0, 10);
    let format = width < 60000 ? "%H:%M:%S" : "%H:%M";
    if (width >= 86400000) {
      format = "%b %d";
    } else if (days) {
      format += "\n%b %d";
    }
    return {
      type: "date", tickformat: format, tick0: iso(first), dtick: step,
      range: [iso(first - width / 2), iso(last + width * 1.5)],
    };
  }

  // A money axis from 0 to a little over the largest value, in cents or finer.
  function costAxis(largest) {
    const digits = largest >= 1 ? 2 : largest >= 0.01 ? 3 : 5;
    return {
      title: { text: "USD" }, overlaying: "y", side: "right", range: [0, largest * 1.15],
      tickformat: "$." + digits + "f", nticks: 5, showgrid: false,
    };
  }

  function timelineChart(points, bucket) {
    const at = points.map(function (p) { return iso(timeOf(p.at)); });
    const width = bucketMs(bucket);
    const perMinute = points.map(function (p) { return p.per_minute; });
    const traces = [
      {
        // Each bar spans its bucket (in milliseconds on a date axis), starting where it starts.
        type: "bar", name: "annotations per minute", x: at, width: width, offset: 0,
        y: perMinute, marker: { color: COLORS.accent },
        hovertemplate: "%{x}: %{y:.1f} per minute<extra></extra>",
      },
    ];
    const largest = Math.max.apply(null, points.map(function (p) { return p.cost; }));
    const extra = {
      showlegend: true, legend: { orientation: "h", y: 1.15 }, margin: { l: 48, r: 64, t: 8, b: 48 },
      xaxis: timeAxis(points, width),
      yaxis: {
        title: { text: "per minute" }, rangemode: "tozero",
        range: [0, Math.max.apply(null, perMinute) * 1.15 || 1],
      },
    };
    if (largest > 0) {
      traces.push({
        type: "scatter", mode: "lines+markers", name: "cumulative cost (USD)", yaxis: "y2",
        // The cost so far at the end of each bucket.
        x: points.map(function (p) { return iso(timeOf(p.at) + width); }),
        y: points.map(function (p) { return p.cost; }), line: { color: COLORS.warn },
        hovertemplate: "%{x}: $%{y:.4f} so far<extra></extra>",
      });
      extra.yaxis2 = costAxis(largest);
    }
    draw("chart-timeline", traces, extra);
  }

  function reliabilityTraces(grain, color, name) {
    const bins = grain.bins;
    return [
      {
        type: "bar", name: name || "accuracy",
        x: bins.map(function (b) { return (b.lower + b.upper) / 2; }),
        y: bins.map(function (b) { return b.accuracy; }),
        width: bins.map(function (b) { return (b.upper - b.lower) * 0.9; }),
        marker: { color: color, opacity: name ? 0.35 : 0.8 },
        customdata: bins.map(function (b) { return [b.count, b.confidence]; }),
        hovertemplate: "%{customdata[0]} items, mean confidence %{customdata[1]:.2f}: %{y:.0%} agree<extra></extra>",
      },
      {
        type: "scatter", mode: "markers", name: (name ? name + " " : "") + "mean confidence",
        x: bins.map(function (b) { return b.confidence; }),
        y: bins.map(function (b) { return b.accuracy; }),
        marker: { color: COLORS.ink, size: 6, symbol: name === "B" ? "square" : "circle" },
        hovertemplate: "mean confidence %{x:.2f}: %{y:.0%} agree<extra></extra>",
      },
    ];
  }

  function riskTraces(points, color, name) {
    return {
      type: "scatter", mode: "lines+markers", name: name || "risk-coverage",
      x: points.map(function (p) { return p.review_share; }),
      y: points.map(function (p) { return p.error_rate; }),
      customdata: points.map(function (p) { return [p.threshold, p.n_accepted]; }),
      line: { color: color, shape: "hv" }, marker: { size: 5, color: color },
      hovertemplate: "threshold %{customdata[0]:.3f}: review %{x:.0%}, " +
        "%{y:.1%} errors in %{customdata[1]} accepted<extra></extra>",
    };
  }

  function currentMarker(current, color) {
    return {
      type: "scatter", mode: "markers", name: "current threshold",
      x: [current.review_share], y: [current.error_rate],
      marker: { size: 13, symbol: "diamond", color: "#fff", line: { color: color, width: 2.5 } },
      hovertemplate: "current threshold " + current.threshold.toFixed(3) +
        ": review %{x:.0%}, %{y:.1%} errors<extra></extra>",
    };
  }

  const RISK_AXES = {
    xaxis: { range: [0, 1.02], tickformat: ".0%", title: { text: "share sent to review" } },
    yaxis: { rangemode: "tozero", tickformat: ".0%", title: { text: "error rate of auto-accepted" } },
  };

  function calibrationCharts(calibration) {
    calibration.grains.forEach(function (grain) {
      draw("chart-reliability-" + grain.grain, reliabilityTraces(grain, COLORS.accent).concat([DIAGONAL]), UNIT_AXES);
    });
    if (calibration.risk.length) {
      const traces = [riskTraces(calibration.risk, COLORS.accent)];
      if (calibration.current && calibration.current.error_rate !== null) {
        traces.push(currentMarker(calibration.current, COLORS.bad));
      }
      draw("chart-risk", traces, RISK_AXES);
    }
  }

  function runDashboard(data) {
    progressChart(data.progress);
    confidenceCharts(data);
    expressionChart(data.expressions);
    vaChart(data.va);
    auChart(data.aus);
    if (data.timeline.length) {
      timelineChart(data.timeline, data.bucket);
    }
    calibrationCharts(data.calibration);
  }

  // --- Comparison ----------------------------------------------------------------

  function comparison(data) {
    data.grains.forEach(function (grain) {
      const traces = [DIAGONAL];
      grain.sides.forEach(function (side, i) {
        if (side) {
          traces.push.apply(traces, reliabilityTraces(side, SIDE_COLORS[i], data.names[i]));
        }
      });
      draw("chart-cmp-" + grain.grain, traces, Object.assign({ showlegend: false, barmode: "overlay" }, UNIT_AXES));
    });
    const risk = [];
    data.risk.forEach(function (points, i) {
      if (points.length) {
        risk.push(riskTraces(points, SIDE_COLORS[i], data.names[i]));
      }
    });
    draw("chart-cmp-risk", risk, Object.assign({ showlegend: true, legend: { orientation: "h", y: 1.15 } }, RISK_AXES));
  }

  function read(id) {
    const element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  }

  const dashboard = read("dashboard-data");
  if (dashboard) {
    runDashboard(dashboard);
  }
  const compared = read("compare-data");
  if (compared) {
    comparison(compared);
  }
})();
