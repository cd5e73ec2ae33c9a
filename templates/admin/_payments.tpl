% include('admin/_payment_rows.tpl', payments=payments)
% if more:
<p><a class="button secondary" href="/admin/payments?before={{more}}&status={{status}}" hx-get="/admin/payments?before={{more}}&status={{status}}" hx-target="#payments" hx-push-url="true">Older payments →</a></p>
% end
