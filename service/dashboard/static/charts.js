/* The charts page: draws the per-minute rollup (the data route named by #charts) with uPlot, in light or
   dark colours as the browser prefers, and reloads it every 30 s while the navbar's Autorefresh is on.
   A file of its own, not inline: the dashboard's CSP runs scripts from the dashboard only. */
(function () {
    "use strict";

    var root = document.getElementById("charts");
    var status = document.getElementById("charts-status");
    var LANES = ["high", "default", "low"];
    var REFRESH_MS = 30000;
    var COLORS = {
        light: {high: "#c0392b", default: "#1f6fb2", low: "#1e8449", first: "#7d3c98", second: "#b9770e",
                text: "#333333", grid: "rgba(0, 0, 0, 0.10)"},
        dark: {high: "#ff7b72", default: "#58a6ff", low: "#3fb950", first: "#d2a8ff", second: "#e3b341",
               text: "#c9d1d9", grid: "rgba(255, 255, 255, 0.14)"}
    };
    // A chart shows one line per lane for each of its `lanes` columns (the second one dashed),
    // or the `single` columns given as [label, column, colour].
    var CHARTS = [
        {id: "finished", title: "Jobs finished per minute", lanes: ["finished"]},
        {id: "failed", title: "Jobs failed per minute", lanes: ["failed"]},
        {id: "depth", title: "Queue depth (jobs waiting)", lanes: ["depth"]},
        {id: "age", title: "Oldest waiting job (seconds)", lanes: ["age"]},
        {id: "wait", title: "Enqueue to start, p50 and p95 (seconds)", lanes: ["wait_p50", "wait_p95"]},
        {id: "lag", title: "Scheduler fire lag (seconds)",
         single: [["mean", "lag_mean", "first"], ["p95", "lag_p95", "second"]]},
        {id: "workers", title: "Workers alive", single: [["workers", "workers", "first"]]}
    ];
    var prefersDark = window.matchMedia("(prefers-color-scheme: dark)");
    var plots = [];
    var current = null;

    function linesOf(chart, data) {
        var lines = [];
        (chart.lanes || []).forEach(function (column, i) {
            LANES.forEach(function (lane) {
                var label = chart.lanes.length > 1 ? lane + " " + column.split("_").pop() : lane;
                lines.push({label: label, color: lane, dashed: i > 0, values: data[column][lane]});
            });
        });
        (chart.single || []).forEach(function (single) {
            lines.push({label: single[0], color: single[2], dashed: false, values: data[single[1]]});
        });
        return lines;
    }

    function columns(chart, data) {
        return [data.t].concat(linesOf(chart, data).map(function (line) { return line.values; }));
    }

    // uPlot hides points where they are dense; a value with no neighbour (one minute between gaps, or the
    // first summary) would then be invisible, so those are always drawn as dots.
    function lonely(u, seriesIdx, show) {
        if (show) {
            return null;  // uPlot draws every point itself
        }
        var values = u.data[seriesIdx];
        var found = [];
        for (var i = 0; i < values.length; i++) {
            if (values[i] != null && values[i - 1] == null && values[i + 1] == null) {
                found.push(i);
            }
        }
        return found.length ? found : null;
    }

    function options(chart, data, palette, width) {
        var axis = {stroke: palette.text, grid: {stroke: palette.grid, width: 1}, ticks: {stroke: palette.grid, width: 1}};
        var series = linesOf(chart, data).map(function (line) {
            var color = palette[line.color];
            var one = {label: line.label, stroke: color, width: 2, spanGaps: false,
                       points: {filter: lonely, fill: color, size: 6}};
            if (line.dashed) {
                one.dash = [6, 4];
            }
            return one;
        });
        return {
            width: width,
            height: 220,
            scales: {
                x: {time: true, range: function () { return [current.from, current.to]; }},
                y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}
            },
            axes: [axis, Object.assign({}, axis, {size: 60})],
            series: [{}].concat(series),
            legend: {show: true}
        };
    }

    function draw() {
        var palette = prefersDark.matches ? COLORS.dark : COLORS.light;
        plots.forEach(function (plot) { plot.destroy(); });
        plots = [];
        root.textContent = "";
        CHARTS.forEach(function (chart) {
            var section = document.createElement("section");
            var heading = document.createElement("h3");
            section.className = "chart";
            section.id = "chart-" + chart.id;
            heading.textContent = chart.title;
            section.appendChild(heading);
            root.appendChild(section);
            var width = section.clientWidth || 600;
            plots.push(new uPlot(options(chart, current, palette, width), columns(chart, current), section));
        });
    }

    function show(data) {
        current = data;
        status.textContent = data.t.length ? "" :
            "No summary yet: a running worker or scheduler writes one a minute.";
        if (plots.length) {
            CHARTS.forEach(function (chart, i) { plots[i].setData(columns(chart, data)); });
        } else {
            draw();
        }
        root.dataset.points = String(data.t.length);
    }

    function load() {
        fetch(root.dataset.source, {headers: {Accept: "application/json"}, credentials: "same-origin"})
            .then(function (response) {
                if (!response.ok) {
                    throw new Error("HTTP " + response.status);
                }
                return response.json();
            })
            .then(show)
            .catch(function (error) {
                status.textContent = "The chart data could not be loaded (" + error.message + ").";
            });
    }

    function resize() {
        plots.forEach(function (plot, i) {
            var section = document.getElementById("chart-" + CHARTS[i].id);
            plot.setSize({width: section.clientWidth || 600, height: 220});
        });
    }

    load();
    window.setInterval(function () {
        if (window.AUTOREFRESH_FLAG) {
            load();
        }
    }, REFRESH_MS);
    prefersDark.addEventListener("change", function () {
        if (current) {
            draw();
        }
    });
    window.addEventListener("resize", resize);
}());
