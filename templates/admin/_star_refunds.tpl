<table class="rows refunds">
  <thead><tr><th>Charge id</th><th class="num">Stars</th><th>Status</th><th class="num">Attempts</th><th>Asked by</th><th>Asked (UTC)</th><th>Done (UTC)</th><th>Reason</th><th>Error or note</th></tr></thead>
  <tbody>
  % for r in refunds:
  <tr><td class="key" data-label="Charge id"><code class="charge">{{r["charge_id"]}}</code></td><td data-label="Stars" class="num">{{stars(r["stars"])}}</td>
    <td data-label="Status" class="aside"><span class="status {{'refunded' if r['status'] == 'done' else 'pending'}}">{{"refunded" if r["status"] == "done" else "pending"}}</span></td>
    <td data-label="Attempts" class="num">{{r["attempts"]}}</td><td data-label="Asked by">{{"the owner" if r["requested_by"] == "owner" else "the shop"}}</td>
    <td data-label="Asked (UTC)">{{r["created_at"][:19].replace("T", " ")}}</td><td data-label="Done (UTC)">{{(r["done_at"] or "")[:19].replace("T", " ")}}</td>
    <td data-label="Reason" class="wide">{{r["reason"]}}</td><td data-label="Error or note" class="wide">{{r["last_error"] or ""}}</td></tr>
  % end
  </tbody>
</table>
