/* The review page's charts, drawn with plotly.js for review.js: the expressions the
 * Monte Carlo samples voted for, and the valence-arousal circumplex with every
 * sample, the machine's aggregate, each expression's typical point and the
 * reviewer's choice. Charts are redrawn with Plotly.react, which updates what is
 * drawn already (review.js moves the chart elements from one face to the next). */
window.ReviewCharts = (function () {
  "use strict";

  const Plotly = window.Plotly;
  if (!Plotly) {
    return null;
  }
  const COLORS = {
    ink: "#1d2330",
    muted: "#9aa3b2",
    accent: "#2f5bd3",
    choice: "#d9480f",
    centroid: "#5b6475",
  };
  const CONFIG = { responsive: true, displayModeBar: false };
  const CHOICE_TRACE = 3;

  function layout(extra) {
    return Object.assign(
      {
        margin: { l: 40, r: 10, t: 6, b: 30 },
        font: { family: "system-ui, -apple-system, 'Segoe UI', sans-serif", size: 11, color: COLORS.ink },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "rgba(0,0,0,0)",
        showlegend: false,
        dragmode: false,
        hoverlabel: { font: { size: 12 } },
      },
      extra
    );
  }

  // Whole numbers of samples: a tick every 1, 2, 5, ... samples, never in between.
  function countTicks(most) {
    const steps = [1, 2, 5, 10, 20, 50, 100];
    const step = steps.find(function (s) { return most / s <= 4; }) || Math.ceil(most / 4);
    return { tickmode: "linear", tick0: 0, dtick: step, range: [0, Math.max(most, 1) * 1.08], tickformat: "d" };
  }

  const LABEL_FONT = 10;
  const LABEL_PLACES = [
    ["top center", 0, -1],
    ["bottom center", 0, 1],
    ["middle right", 1, 0],
    ["middle left", -1, 0],
    ["top right", 1, -1],
    ["top left", -1, -1],
    ["bottom right", 1, 1],
    ["bottom left", -1, 1],
  ];
  let measureContext = null;

  function textWidth(text) {
    if (!measureContext) {
      measureContext = document.createElement("canvas").getContext("2d");
      measureContext.font = LABEL_FONT + "px system-ui, -apple-system, 'Segoe UI', sans-serif";
    }
    return measureContext.measureText(text).width;
  }

  function overlap(a, b) {
    const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
    const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    return w > 0 && h > 0 ? w * h : 0;
  }

  /* Where to put each centroid's label so that no two overlap (anger and contempt sit
   * close together): each label, in turn, takes the first place around its point that
   * overlaps no label placed before it and no other point, else the place that
   * overlaps least. Boxes are in pixels, from the plot's size. */
  function labelPlaces(points, names, side) {
    const scale = side / 2.16;
    const marker = 5;
    const gap = 2;
    const placed = [];
    const dots = points.map(function (p) {
      const x = p[0] * scale;
      const y = -p[1] * scale;
      return [x - marker, y - marker, x + marker, y + marker];
    });
    return names.map(function (name, i) {
      const w = textWidth(name) + 2;
      const h = LABEL_FONT + 3;
      const x = points[i][0] * scale;
      const y = -points[i][1] * scale;
      let best = null;
      let bestCost = Infinity;
      LABEL_PLACES.forEach(function (place) {
        if (bestCost === 0) {
          return;
        }
        const dx = place[1];
        const dy = place[2];
        const left = dx === 0 ? x - w / 2 : dx > 0 ? x + marker + gap : x - marker - gap - w;
        const top = dy === 0 ? y - h / 2 : dy > 0 ? y + marker + gap : y - marker - gap - h;
        const box = [left, top, left + w, top + h];
        let cost = 0;
        placed.forEach(function (other) { cost += overlap(box, other); });
        dots.forEach(function (dot, j) { cost += j === i ? 0 : overlap(box, dot); });
        if (cost < bestCost) {
          best = [place[0], box];
          bestCost = cost;
        }
      });
      placed.push(best[1]);
      return best[0];
    });
  }

  // Each expression's bar: the machine's in blue, the reviewer's other choice in orange.
  function voteColors(votes, machine, chosen) {
    return Object.keys(votes).map(function (e) {
      if (e === chosen && e !== machine) {
        return COLORS.choice;
      }
      return e === machine ? COLORS.accent : COLORS.muted;
    });
  }

  function drawVotes(chart, data, machine, chosen) {
    const names = Object.keys(data.votes);
    const counts = names.map(function (e) { return data.votes[e]; });
    return Plotly.react(
      chart,
      [{
        type: "bar",
        x: names,
        y: counts,
        marker: { color: voteColors(data.votes, machine, chosen) },
        hovertemplate: "%{x}: %{y} sample(s)<extra></extra>",
      }],
      layout({
        // Fixed margins: automargin would lay the chart out twice.
        margin: { l: 40, r: 10, t: 6, b: 48 },
        xaxis: { fixedrange: true, tickfont: { size: 10 }, tickangle: -35 },
        yaxis: Object.assign({ fixedrange: true, title: { text: "samples" } }, countTicks(Math.max.apply(null, counts.concat([0])))),
      }),
      CONFIG
    );
  }

  function drawCircumplex(chart, data, now) {
    const samples = data.va_samples || [];
    const names = Object.keys(data.centroids || {});
    const points = names.map(function (e) { return data.centroids[e]; });
    const aggregate = data.va_aggregate;
    const margin = { l: 42, r: 8, t: 6, b: 36 };
    const side = Math.max(120, Math.min(chart.clientWidth - margin.l - margin.r, chart.clientHeight - margin.t - margin.b));
    const axis = {
      range: [-1.08, 1.08],
      fixedrange: true,
      zeroline: true,
      zerolinecolor: "#c4cad6",
      gridcolor: "#eef0f5",
      dtick: 0.5,
      constrain: "domain",
    };
    return Plotly.react(
      chart,
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
          name: "typical",
          type: "scatter",
          mode: "markers+text",
          x: points.map(function (p) { return p[0]; }),
          y: points.map(function (p) { return p[1]; }),
          text: names,
          textposition: labelPlaces(points, names, side),
          textfont: { size: LABEL_FONT, color: COLORS.centroid },
          marker: { size: 7, symbol: "diamond-open", color: COLORS.centroid },
          hovertemplate: "%{text} (typical): V %{x:.2f}, A %{y:.2f}<extra></extra>",
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
          x: now.valence !== null && now.arousal !== null ? [now.valence] : [],
          y: now.valence !== null && now.arousal !== null ? [now.arousal] : [],
          marker: { size: 18, symbol: "circle-open", color: COLORS.choice, line: { width: 3, color: COLORS.choice } },
          hovertemplate: "your choice: V %{x:.2f}, A %{y:.2f}<extra></extra>",
        },
      ],
      layout({
        margin: margin,
        xaxis: Object.assign({ title: { text: "valence", standoff: 2 } }, axis),
        yaxis: Object.assign({ title: { text: "arousal", standoff: 2 }, scaleanchor: "x", scaleratio: 1 }, axis),
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
  }

  // Move the reviewer's choice: the circumplex's marker, the votes' colour.
  function showChoice(votesChart, vaChart, data, machine, now) {
    if (vaChart) {
      const has = now.valence !== null && now.arousal !== null;
      Plotly.restyle(vaChart, { x: [has ? [now.valence] : []], y: [has ? [now.arousal] : []] }, [CHOICE_TRACE]);
    }
    if (votesChart) {
      Plotly.restyle(votesChart, { "marker.color": [voteColors(data.votes, machine, now.expression)] }, [0]);
    }
  }

  return { drawVotes: drawVotes, drawCircumplex: drawCircumplex, showChoice: showChoice };
})();
