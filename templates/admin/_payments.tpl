% include('admin/_payment_rows.tpl', payments=payments)
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#payments" hx-push-url="true">Older payments →</a></p>
% end
