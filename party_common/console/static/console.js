// fedprofile console: sortable tables and the live part of a page. Nothing else runs in the browser.
"use strict";

function cellValue(row, index) {
  const cell = row.cells[index];
  if (!cell) return "";
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  const num = Number(raw.replace(/,/g, ""));
  return raw !== "" && raw !== "-" && !Number.isNaN(num) ? num : raw.toLowerCase();
}

function makeSortable(table) {
  const head = table.tHead;
  if (!head) return;
  Array.from(head.rows[0].cells).forEach((th, index) => {
    th.addEventListener("click", () => {
      const descending = th.getAttribute("aria-sort") === "ascending";
      Array.from(head.rows[0].cells).forEach((other) => other.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = cellValue(a, index), y = cellValue(b, index);
        const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return descending ? -order : order;
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
}

// An element with data-refresh-ms is fetched again after that many milliseconds and replaced in place, until
// the server's copy no longer asks for a refresh (the job ended).
function refreshLive() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refreshMs) return;
  window.setTimeout(async () => {
    try {
      const response = await fetch(window.location.href, {credentials: "same-origin"});
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("live");
        if (fresh) {
          live.replaceWith(fresh);
          fresh.querySelectorAll("table.sortable").forEach(makeSortable);
        }
      }
    } catch (err) {
      // the console stopped: leave the page as it is
      return;
    }
    refreshLive();
  }, Number(live.dataset.refreshMs));
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  refreshLive();
});
