<table>
  <thead><tr><th>When (UTC)</th><th>Action</th><th>Details</th><th>From</th></tr></thead>
  <tbody>
  % for r in rows:
  <tr><td>{{r["at"][:19].replace("T", " ")}}</td><td>{{r["action"]}}</td><td>{{r["details"]}}</td><td>{{r["remote_addr"] or ""}}</td></tr>
  % end
  </tbody>
</table>
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#audit" hx-push-url="true">Older →</a></p>
% end
