<table class="rows">
  <thead><tr><th>When (UTC)</th><th>Action</th><th>Details</th><th>From</th></tr></thead>
  <tbody>
  % for r in rows:
  <tr><td data-label="When (UTC)">{{r["at"][:19].replace("T", " ")}}</td><td data-label="Action">{{r["action"]}}</td><td data-label="Details" class="wide">{{r["details"]}}</td><td data-label="From">{{r["remote_addr"] or ""}}</td></tr>
  % end
  </tbody>
</table>
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#audit" hx-push-url="true">Older →</a></p>
% end
